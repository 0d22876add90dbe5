"""``adapterctl check``: will vLLM, SGLang, LoRAX, TGI, llama.cpp or MLX serve these adapters as
trained? Config and safetensors headers only: never imports torch."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli.options import Revision, Token, examples, hub_options
from adapterctl.cli.options import engine_names as cli_engine_names
from adapterctl.cli.output import get_output
from adapterctl.core.engine_rules.names import SERVING

VERDICT_STYLE = {"serves": "green", "changes": "yellow", "refuses": "red"}


def check_cmd(
    adapters: Annotated[
        list[str], typer.Argument(metavar="ADAPTER...", help="Adapter folders or Hub ids (user/repo[@rev]).")
    ],
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            "-e",
            metavar="ENGINE",
            help=f"{', '.join(SERVING)} or all (default); repeatable or comma-separated.",
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            metavar="BASE",
            help="Base model folder or Hub id (headers only): check module "
            "names, vocabulary and tied embeddings (default: the adapter's base_model_name_or_path "
            "when it is a local folder).",
        ),
    ] = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Say, per adapter and serving engine, whether the engine serves it as trained ("serves"),
    loads it but computes something else ("changes") or refuses it ("refuses"), why (citing the
    engine's source), and the fix: serving flags or an `adapterctl convert --for` command."""
    from adapterctl.core.engine_rules.check import check_adapters, engine_names
    from adapterctl.errors import NotServedError
    from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

    out = get_output()
    names = engine_names(cli_engine_names(engine) or None)  # usage errors before any download
    hub = hub_options(revision, token)
    folders = [(str(resolve_adapter_dir(a, hub, need_weights=False, header_only=True)), a) for a in adapters]
    base_ref = None
    if base:
        base_ref = (
            str(resolve_model_dir(base, hub_options(None, token), need_weights=False, header_only=True)),
            base,
        )
    report = check_adapters(folders, names, base_ref)
    for note in report.notes:
        out.info(note)
    data = report.to_dict()
    data.pop("ok")
    if report.ok:
        out.result(data, lambda console: render(console, report))
        return
    bad = [r for r in report.results if r.verdict != "serves"]
    err = NotServedError(
        f"{len(bad)} of {len(report.results)} verdicts are not 'serves': "
        + ", ".join(f"{r.engine} {r.verdict} {r.adapter}" for r in bad[:4])
        + (" ..." if len(bad) > 4 else ""),
        hint="Each result names the fix: serving flags or an `adapterctl convert --for` command.",
    )
    out.fail(data, lambda console: render(console, report), err)


def render(console, report) -> None:
    """A verdict matrix (adapters x engines), then, for each verdict that is not a plain
    'serves', why (with the engine source) and the fix."""
    from rich.markup import escape
    from rich.table import Table

    engines = list(dict.fromkeys(r.engine for r in report.results))
    adapters = list(dict.fromkeys(r.adapter for r in report.results))
    cell = {(r.adapter, r.engine): r for r in report.results}
    t = Table()
    t.add_column("adapter", overflow="fold")  # full names, wrapped: never cut
    for e in engines:
        version = next(r.engine_version for r in report.results if r.engine == e)
        t.add_column(f"{e}\n[dim]{escape(version)}[/dim]", justify="center", overflow="fold")
    for a in adapters:
        row = []
        for e in engines:
            r = cell[(a, e)]
            style = VERDICT_STYLE[r.verdict]
            row.append(f"[{style}]{r.verdict}[/{style}]" + ("+flags" if r.flags else ""))
        t.add_row(escape(a), *row)
    console.print(t)
    for r in report.results:
        if r.verdict == "serves" and not r.flags:
            continue
        style = VERDICT_STYLE[r.verdict]
        console.print(
            f"\n{escape(r.adapter)} on {r.engine} {escape(r.engine_version)}: [{style}]{r.verdict}[/{style}]"
        )
        for f in r.reasons:
            console.print(f"  - {escape(f.message)} [dim]({escape(f.source.file)})[/dim]")
        if r.flags and r.verdict != "serves":
            console.print(f"  serving flags: {escape(' '.join(r.flags))}")
        if r.fix:
            console.print(f"  fix: {escape(r.fix)}")
        elif r.verdict != "serves":
            console.print("  fix: [red]none[/red] (adapterctl cannot rewrite this for the engine)")


def register(app: typer.Typer) -> None:
    app.command(
        "check",
        epilog=examples(
            "adapterctl check ./my-lora",
            "adapterctl check ./a ./b --engine vllm --base ./base-model",
            "adapterctl --json check user/my-lora --engine vllm,llama.cpp | jq .results",
        ),
    )(check_cmd)
