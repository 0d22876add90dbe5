"""``convert --to gguf|mlx`` / ``--from gguf|mlx``: argument resolution and the export report."""

from __future__ import annotations

from dataclasses import replace


def resolve_format_request(req, hub, plain):
    """Local paths for SOURCE and --base. A GGUF or MLX source is a local file or folder; the
    base is read for its config and tensor names only (headers, never the weights)."""
    from adapterctl.io.hub.resolve import (
        resolve_adapter_dir,
        resolve_local,
        resolve_model_dir,
    )

    if req.from_format:
        source = resolve_local(req.source, "adapter")
    elif req.extract_base:
        source = resolve_model_dir(req.source, hub)
    else:
        source = resolve_adapter_dir(req.source, hub)
    base = resolve_model_dir(req.base, plain, need_weights=False, header_only=True) if req.base else None
    init = resolve_adapter_dir(req.init, plain) if req.init else None
    extract = resolve_model_dir(req.extract_base, plain) if req.extract_base else None
    return replace(
        req,
        source=str(source),
        base=str(base) if base else None,
        init=str(init) if init else None,
        extract_base=str(extract) if extract else None,
    )


def render_export(console, r) -> None:
    from rich.markup import escape

    if r.format == "gguf":
        types = ", ".join(f"{k} x{v}" for k, v in sorted(r.types.items()))
        console.print(
            f"[green]wrote[/green] {escape(r.output)} (llama.cpp LoRA adapter, "
            f"architecture {r.arch}): {r.num_modules} modules, {r.num_tensors} tensors "
            f"({types}), adapter.lora.alpha={r.lora_alpha:g}"
        )
        console.print(f"llama.cpp: llama-cli -m BASE.gguf --lora {escape(r.output)}")
        console.print(f"llama.cpp server: llama-server -m BASE.gguf --lora {escape(r.output)}")
        # Ollama 0.34.1 dropped creating models from a Modelfile ADAPTER line (ollama/ollama#14969,
        # merged 2026-09-15; models built before still serve), so no Modelfile hint any more.
    else:
        console.print(
            f"[green]wrote[/green] {escape(r.output)} (MLX-LM {r.fine_tune_type} "
            f"adapter): {r.num_modules} modules, rank {r.rank}, scale {r.scale:.6g}, "
            f"num_layers {r.num_layers}, keys {', '.join(r.keys)}"
        )
        console.print(f"MLX-LM: mlx_lm.generate --model BASE --adapter-path {escape(r.output)}")
