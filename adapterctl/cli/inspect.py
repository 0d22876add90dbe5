"""``adapterctl inspect``: what is in an adapter, and can it be used? Never imports torch."""

from __future__ import annotations

import re
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
    all_modules: Annotated[
        bool,
        typer.Option(
            "--all",
            help="One row per module (default: modules that differ only by their layer number "
            "share a row, e.g. model.layers.{0-31}.mlp.down_proj).",
        ),
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
        return out.result(data, lambda console: render(console, summary, all_modules))
    # the JSON failure document carries the summary too: scripts read problems from it
    first = next(p for p in summary.problems if p.severity == "error")
    err = as_error(first)
    err.kind = first.code  # the error's type is the problem's stable id (e.g. rank_mismatch)
    out.fail(data, lambda console: render(console, summary, all_modules), err)


def render(console, s, all_modules: bool = False) -> None:
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
        for table in _module_table(s, all_modules, console.width):
            console.print(table)
    for p in s.problems:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"[{style}]{p.severity}[/{style}] [{style}]{p.code}[/{style}]: {_esc(p.message)}")
        if p.hint:
            console.print(f"  [dim]hint: {_esc(p.hint)}[/dim]")
    console.print("[green]usable[/green]" if s.usable else "[red]not usable as is[/red]")


def _module_table(s, all_modules: bool = False, width: int = 80) -> list:
    """The modules' table, and with --check-values a second one of their values (two narrow tables
    read at 80 columns where one wide one would fold every cell)."""
    from rich.table import Table
    from rich.text import Text

    values = any(m.nonfinite is not None for m in s.modules)
    rows = [_row(m, values) for m in s.modules]
    groups = [(m.name, [r]) for m, r in zip(s.modules, rows)] if all_modules else _by_layer(s.modules, rows)
    # at narrow widths a long name breaks after its layer part, not at a random character
    names = [_breakable(name) if width < 120 else name for name, _ in groups]
    widest = max(len(p) for n in names for p in n.split("\n"))
    dtypes = sorted({str(r[7]) for r in rows})
    one_dtype = len(dtypes) == 1  # then it goes in the title, not in a column of its own
    title = f"{len(s.modules)} LoRA modules" + (f" ({dtypes[0]})" if one_dtype else "")
    if len(groups) < len(rows):
        title += f" in {len(groups)} rows (--all: one row per module)"
    t = Table(title=title, title_justify="left")
    t.add_column("module", overflow="fold", min_width=widest)  # never cut: at worst folded
    cols = ("kind", "r", "alpha", "scaling", "A", "B") + (() if one_dtype else ("dtype",))
    for col in cols:
        t.add_column(col, justify="right" if col in ("r", "alpha", "scaling") else "left", overflow="fold")
    for name, (_, members) in zip(names, groups):
        t.add_row(Text(name), *members[0][1 : 1 + len(cols)])
    if not values:
        return [t]
    v = Table(title="values (--check-values)", title_justify="left")
    v.add_column("module", overflow="fold", min_width=widest)
    v.add_column("|ΔW| (min - max)", justify="right", overflow="fold")
    v.add_column("NaN/Inf", justify="right", overflow="fold")
    for name, (_, members) in zip(names, groups):
        norms = [r[8] for r in members if r[8] is not None]
        span = "-"
        if norms:
            lo, hi = min(norms), max(norms)
            span = f"{lo:.4g}" if lo == hi else f"{lo:.4g} - {hi:.4g}"
        v.add_row(Text(name), span, str(sum(r[9] for r in members)))
    return [t, v]


def _breakable(name: str) -> str:
    """``model.layers.{0-31}.`` and the rest on two lines, so that a name fits beside the other
    columns at 80 columns without being cut anywhere else."""
    hit = re.search(r"\.(\{[^}]*\}|\d+)\.", name)
    return f"{name[: hit.end()]}\n{name[hit.end() :]}" if hit and len(name) > 20 else name


def _row(m, values: bool) -> list:
    """One module as its cells: name, kind, r, alpha, scaling, A, B, dtype (+ norm, non-finite)."""
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
        row += [m.delta_norm, m.nonfinite or 0]
    return row


_LAYER = re.compile(r"\.(\d+)\.")


def _by_layer(modules, rows) -> list[tuple[str, list[list]]]:
    """Modules whose names differ only in their first number (the layer) and that agree on every
    other column share a row named ``prefix.{0-3,5}.suffix``; the order is the modules' own."""
    groups: dict[tuple, list[tuple[int, list]]] = {}
    for m, row in zip(modules, rows):
        hit = _LAYER.search(m.name)
        if hit is None:
            groups[(m.name, None, *row[1:8])] = [(-1, row)]
            continue
        key = (m.name[: hit.start()], m.name[hit.end() :], *row[1:8])
        groups.setdefault(key, []).append((int(hit.group(1)), row))
    out = []
    for key, members in groups.items():
        if key[1] is None or len(members) == 1:
            out += [(r[0], [r]) for _, r in members]
        else:
            layers = _ranges(sorted(i for i, _ in members))
            out.append((f"{key[0]}.{{{layers}}}.{key[1]}", [r for _, r in members]))
    return out


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


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
