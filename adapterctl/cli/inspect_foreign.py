"""``inspect`` of a llama.cpp LoRA file (GGUF) or an MLX-LM adapter folder (headers only)."""

from __future__ import annotations

from pathlib import Path


def inspect_other_format(out, adapter: str) -> bool:
    """Print the summary and return True when ``adapter`` is in another engine's format."""
    from adapterctl.core.adapter.foreign import inspect_foreign

    if not Path(adapter).expanduser().exists():
        return False
    summary = inspect_foreign(Path(adapter).expanduser(), adapter)
    if summary is None:
        return False
    out.result(summary.to_dict(), lambda console: render_foreign(console, summary))
    return True


def render_foreign(console, s) -> None:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    what = (
        "llama.cpp LoRA adapter (GGUF)" if s.format == "gguf" else f"MLX-LM {s.adapter_type} adapter folder"
    )
    rows = [
        ("adapter", s.source),
        ("format", what),
        ("architecture" if s.format == "gguf" else "model", s.architecture),
        ("adapter.lora.alpha", None if s.lora_alpha is None else f"{s.lora_alpha:g}"),
        ("rank / scale", None if s.scale is None else f"{s.rank} / {s.scale:.4g}"),
        ("num_layers", s.num_layers),
        ("keys", ", ".join(s.keys) if s.keys else None),
        ("tensors", f"{s.num_tensors} ({', '.join(f'{k}: {v}' for k, v in s.dtypes.items())})"),
    ]
    for k, v in rows:
        if v is not None:
            head.add_row(k, Text(str(v)))
    console.print(head)
    t = Table(title=f"{len(s.modules)} modules", title_justify="left")
    for col in ("module", "r", "lora_a", "lora_b", "type"):
        t.add_column(col, justify="right" if col == "r" else "left")
    for m in s.modules:
        t.add_row(
            Text(m.name),
            str(m.r),
            "x".join(map(str, m.a_shape or [])) or "-",
            "x".join(map(str, m.b_shape or [])) or "-",
            m.dtype,
        )
    console.print(t)
    console.print(f"not a PEFT adapter: convert it with [bold]{Text(s.convert)}[/bold]")
