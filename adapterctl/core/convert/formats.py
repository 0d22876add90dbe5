"""``convert --to gguf|mlx`` / ``--from gguf|mlx``: other engines' adapter files in and out.

Order: source (a GGUF or MLX adapter read back as a PEFT draft, or a PEFT adapter / extraction as
usual) -> the usual steps (mutated-init conversion, rank reduction, serving cleanup) -> either the
export (``--to``) or the PEFT writer with ``--dtype``. The request is ``pipeline.ConvertRequest``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapterctl.errors import UsageError

FORMATS = ("gguf", "mlx")


def check_format_request(req) -> None:
    """Usage errors of the format options (exit 2), before anything is read."""
    for flag, value in (("--to", req.to), ("--from", req.from_format)):
        if value is not None and value not in FORMATS:
            raise UsageError(
                f"{flag} {value!r} is not a known format",
                hint="Use gguf (llama.cpp / Ollama) or mlx (MLX-LM).",
            )
    if req.to and req.to == req.from_format:
        raise UsageError(
            f"--from {req.from_format} and --to {req.to} name the same format",
            hint="Drop --to to get a PEFT adapter back.",
        )
    if req.from_format and (req.init or req.extract_base):
        raise UsageError(
            "--from cannot be combined with --pissa-init or --extract",
            hint="A GGUF or MLX adapter is plain LoRA already.",
        )
    if req.from_format == "gguf" and not req.base:
        raise UsageError(
            "--from gguf needs --base BASE",
            hint="The transformers base model names the tensors and attention heads: "
            "convert --from gguf --base ./base-model adapter.gguf OUT",
        )
    if req.outtype != "f32" and req.to != "gguf":
        raise UsageError(
            "--outtype applies to --to gguf only",
            hint="For a PEFT output use --dtype float32|bfloat16|float16.",
        )
    if req.to and req.dtype:
        raise UsageError(
            "--dtype applies to PEFT outputs; with --to gguf use --outtype",
            hint="--outtype f32|f16|bf16|q8_0 (GGUF); MLX adapters are written in float32.",
        )


def run_format_convert(req, steps: Callable, progress=None):
    """Execute a request that reads or writes another engine's format."""
    from dataclasses import replace

    from adapterctl.core.convert.cast import cast_draft
    from adapterctl.core.convert.draft import write_draft

    draft = _read_source(req, progress)
    if not (req.from_format or req.extract_base):
        draft = steps(draft, replace(req, base=req.base if _is_mutated(draft) else None))
    elif req.from_format and (req.rank is not None or req.energy is not None):
        draft = steps(draft, replace(req, base=None))
    if req.to and _is_mutated(draft):
        raise UsageError(
            f"{draft.source}: init_lora_weights="
            f"{draft.config.get('init_lora_weights')!r}: the adapter was trained on a "
            "residual base, so it must become plain LoRA before export",
            hint="Add --base BASE (PiSSA/OLoRA) or --pissa-init INIT to this command.",
        )
    if req.to == "gguf":
        from adapterctl.core.convert.gguf import check_targets, export_gguf

        facts = _gguf_base(req, draft)
        check_targets(draft, facts)
        draft = _for_target_engine(draft, req)
        return export_gguf(draft, facts, req.output, req.outtype, req.force, inputs=req.inputs())
    if req.to or req.engines:
        draft = _for_target_engine(draft, req)
    if req.to == "mlx":
        from adapterctl.core.convert.mlx import export_mlx, read_mlx_base

        base = _base_dir(req, draft, "--to mlx")
        mlx_base = read_mlx_base(base, req.base_name or str(base))
        return export_mlx(draft, mlx_base, req.output, req.force, inputs=req.inputs())
    if req.dtype:
        draft = cast_draft(draft, req.dtype)
    return write_draft(draft, req.output, req.force, inputs=req.inputs())


#: the engine whose rules a --to format must satisfy (core/engine_rules)
TARGET_ENGINE = {"gguf": "llama.cpp", "mlx": "mlx"}


def _for_target_engine(draft, req):
    """What the target format cannot express goes through ``convert --for ENGINE`` first (DoRA to
    LoRA by SVD with --base, extras to exact full-rank LoRA, or a refusal naming the module), with
    the same reporting; an adapter the format holds as it is passes through untouched."""
    from adapterctl.core.convert.draft import view_adapter
    from adapterctl.core.convert.for_engine import convert_for_engine
    from adapterctl.core.convert.gguf import blockers

    engines = req.engines
    if not engines:
        if req.to != "gguf" or not blockers(draft, view_adapter(draft)):
            return draft
        engines = (TARGET_ENGINE[req.to],)
    return convert_for_engine(draft, req.for_engine_request(engines))


def _read_source(req, progress):
    from adapterctl.core.convert.draft import read_draft

    if req.from_format == "gguf":
        from adapterctl.core.convert.gguf import draft_from_gguf
        from adapterctl.core.engine_rules.gguf_arch import read_gguf_base

        facts = read_gguf_base(req.base, req.base_name)
        return draft_from_gguf(req.source, facts, req.base_name or req.base, req.source_name)
    if req.from_format == "mlx":
        from adapterctl.core.convert.mlx import draft_from_mlx, read_mlx_base

        model_type = read_mlx_base(req.base, req.base_name).model_type if req.base else None
        return draft_from_mlx(req.source, model_type, req.base_name or req.base, req.source_name)
    if req.extract_base:
        from adapterctl.core.convert.extract import extract_adapter

        return extract_adapter(
            req.extract_base,
            req.source,
            req.rank,
            energy=req.energy,
            skip_unfactorable=req.skip_unfactorable,
            base_name=req.base_name,
            progress=progress,
        )
    return read_draft(req.source, req.source_name)


def _is_mutated(draft) -> bool:
    from adapterctl.core.adapter.config import parse_adapter_config

    return parse_adapter_config(draft.config, draft.source).init_kind not in ("plain",)


def _base_dir(req, draft, flag: str) -> Path:
    from adapterctl.core.adapter.base_info import local_base

    if req.base:
        return Path(req.base)
    name = draft.config.get("base_model_name_or_path")
    found = local_base(name) if isinstance(name, str) else None
    if found is not None:
        return found
    raise UsageError(
        f"{flag} needs the base model: pass --base BASE",
        hint=f"The adapter's base_model_name_or_path ({name!r}) is not a local "
        "folder; give the transformers base model folder or Hub id with --base.",
    )


def _gguf_base(req, draft):
    from adapterctl.core.engine_rules.gguf_arch import read_gguf_base

    base = _base_dir(req, draft, "--to gguf")
    return read_gguf_base(base, req.base_name or str(base))
