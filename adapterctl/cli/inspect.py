"""``adapterctl inspect``: what is in an adapter, and can it be used? Never imports torch."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli.options import Revision, Token, examples, hub_options
from adapterctl.cli.output import get_output, human_bytes


def inspect_cmd(
    adapter: Annotated[str, typer.Argument(help="Adapter folder (or Hub id user/repo[@rev]).")],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base model folder or Hub id: check that every adapted module exists and "
            "shapes fit (reads headers only).",
        ),
    ] = None,
    check_values: Annotated[
        bool, typer.Option("--check-values", help="Read the tensors: report NaN/Inf and per-module norms.")
    ] = False,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Show what an adapter holds and whether it can be used (config and safetensors header only)."""
    from adapterctl.core.adapter.inspect import inspect_adapter
    from adapterctl.core.adapter.problems import as_error
    from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

    out = get_output()
    from adapterctl.cli.inspect_foreign import inspect_other_format

    if inspect_other_format(out, adapter):  # a llama.cpp GGUF file or an MLX-LM folder
        return
    hub = hub_options(revision, token)
    folder = resolve_adapter_dir(adapter, hub, need_weights=check_values, header_only=True)
    base_dir = (
        resolve_model_dir(base, hub_options(None, token), need_weights=False, header_only=True)
        if base
        else None
    )
    summary = inspect_adapter(
        folder, base=base_dir, check_values=check_values, source=adapter, base_source=base
    )
    data = summary.to_dict()
    if summary.usable:
        return out.result(data, lambda console: render(console, summary))
    # the JSON failure document carries the summary too: scripts read problems from it
    first = next(p for p in summary.problems if p.severity == "error")
    err = as_error(first)
    err.kind = first.code  # the error's type is the problem's stable id (e.g. rank_mismatch)
    out.fail(data, lambda console: render(console, summary), err)


def render(console, s) -> None:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    c, w = s.config, s.weights
    rows = [
        ("adapter", s.source),
        ("peft_type", c.peft_type),
        ("task_type", c.task_type),
        ("base model", c.base_model),
        ("r / alpha / scaling", f"{c.r} / {c.lora_alpha} / {c.scaling:.4g}" if c.r else None),
        ("variants", ", ".join(c.variants) or "none"),
        ("init_lora_weights", c.init_lora_weights),
        ("target_modules", _fmt(c.target_modules)),
        ("target_parameters", _fmt(c.target_parameters)),
        ("exclude_modules", _fmt(c.exclude_modules)),
        ("modules_to_save", _fmt(c.modules_to_save)),
        ("bias", c.bias),
        ("peft_version", c.peft_version),
        (
            "weights",
            f"{w.weights_file} ({w.num_tensors} tensors, {w.num_parameters:,} parameters, "
            f"{human_bytes(w.size_bytes)}, {_fmt(w.dtypes)})"
            if w.weights_file
            else None,
        ),
    ]
    for key, values in (s.extras or {}).items():
        if values:
            rows.append((f"saved {key}", _fmt(values)))
    if s.base:
        rows.append(
            (
                "base checked",
                f"{s.base.path} ({s.base.model_type}): "
                + ("compatible" if s.base.compatible else "NOT compatible"),
            )
        )
        m = s.base.key_mapping
        if m:
            rows.append(
                (
                    "module paths",
                    f"mapped {m['from']} -> {m['to']} ({'; '.join(m['rules'])})"
                    " by attach, merge and generate",
                )
            )
    for k, v in rows:
        if v is not None:
            head.add_row(k, Text(str(v)))  # user text: no markup
    console.print(head)
    if s.modules:
        console.print(_module_table(s))
    for p in s.problems:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"[{style}]{p.severity}[/{style}] [{style}]{p.code}[/{style}]: {_esc(p.message)}")
        if p.hint:
            console.print(f"  [dim]hint: {_esc(p.hint)}[/dim]")
    console.print("[green]usable[/green]" if s.usable else "[red]not usable as is[/red]")


def _module_table(s):
    from rich.table import Table
    from rich.text import Text

    values = any(m.nonfinite is not None for m in s.modules)
    t = Table(title=f"{len(s.modules)} LoRA modules", title_justify="left")
    for col in ("module", "kind", "r", "alpha", "scaling", "A", "B", "dtype"):
        t.add_column(col, justify="right" if col in ("r", "alpha", "scaling") else "left")
    if values:
        t.add_column("|ΔW|", justify="right")
        t.add_column("NaN/Inf", justify="right")
    for m in s.modules:
        kind = m.kind + ("+dora" if m.dora else "") + ("+bias" if m.lora_bias else "")
        rank = f"{m.experts}x{m.r}" if m.experts else str(m.r)  # experts x r per expert
        row = [
            m.name,
            kind,
            rank,
            f"{m.alpha:g}",
            f"{m.scaling:.4g}",
            _shape(m.a_shape),
            _shape(m.b_shape),
            m.dtype,
        ]
        if values:
            row += [f"{m.delta_norm:.4g}" if m.delta_norm is not None else "-", str(m.nonfinite)]
        t.add_row(Text(row[0]), *row[1:])
    return t


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _fmt(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items()) or "{}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "[]"
    return str(v)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def register(app: typer.Typer) -> None:
    app.command(
        "inspect",
        epilog=examples(
            "adapterctl inspect ./my-lora",
            "adapterctl inspect ./my-lora --base ./Llama-3.2-1B --check-values",
            "adapterctl --json inspect user/my-lora | jq .modules",
        ),
    )(inspect_cmd)
