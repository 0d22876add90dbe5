"""``adapterctl deploy``, ``undeploy`` and ``ls``: adapters into and out of a running server (vLLM,
SGLang), checked with the engine's rules first, verified after; the library side is
:mod:`adapterctl.core.serve.deploy`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from adapterctl.cli.options import (
    ApiKey,
    Lora,
    Revision,
    Timeout,
    Token,
    engine_name,
    examples,
    hub_options,
    served_adapters,
)
from adapterctl.cli.output import get_output
from adapterctl.errors import UsageError

EndpointArg = Annotated[
    str,
    typer.Option(
        "--endpoint", metavar="URL", help="The running server (vLLM or SGLang).", show_default=False
    ),
]
EngineOpt = Annotated[
    str, typer.Option("--engine", metavar="ENGINE", help="The server's engine: vllm, sglang or llama.cpp.")
]
StageOpt = Annotated[
    Path | None,
    typer.Option(
        "--stage",
        metavar="DIR",
        help="Where adapters are staged for the server to read (a folder it can see; default "
        "~/.cache/adapterctl/deploy); deployments are recorded there.",
        show_default=False,
    ),
]


def default_stage() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "adapterctl" / "deploy"


def _opts(endpoint: str, api_key: str | None, timeout: float):
    from adapterctl.core.serve.client import EndpointOptions

    return EndpointOptions(endpoint, api_key=api_key, timeout=timeout)


def deploy_cmd(
    endpoint: EndpointArg,
    lora: Lora = None,
    engine: EngineOpt = "vllm",
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="The base the server runs, for the checks and verify (default: the folder the "
            "server loaded it from).",
            show_default=False,
        ),
    ] = None,
    stage: StageOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="A NAME the server already serves is unloaded, then loaded.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip verify (our engine's tokens against the server's).")
    ] = False,
    keep_on_failure: Annotated[
        bool,
        typer.Option("--keep-on-failure", help="Keep adapters that verify finds not served as trained."),
    ] = False,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Load adapters into a running server: each is checked with the engine's rules (converted
    where that is exact, refused otherwise: a refused adapter is never sent), staged where the
    server reads it, loaded through the engine's runtime API, then verified against adapterctl's
    own engine (unloaded again if it is not served as trained)."""
    from adapterctl.core.runtime.session import base_hub
    from adapterctl.core.serve.client import Client
    from adapterctl.core.serve.deploy import check_runtime_engine, deploy_adapters, served_models, server_base
    from adapterctl.core.serve.server import check_served_names
    from adapterctl.errors import NotServedError
    from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

    out = get_output()
    engine = check_runtime_engine(engine_name(engine))
    pairs = served_adapters(lora, None, "deploy")
    if not pairs:
        raise UsageError("deploy: no adapter given", hint="--lora NAME=ADAPTER (repeatable).")
    opts = _opts(endpoint, api_key, timeout)
    models = served_models(Client(opts))  # a server that is not there fails before any work
    base = server_base(models, base)
    check_served_names([n for n, _ in pairs], base)
    hub = hub_options(revision, token)
    dirs = [resolve_adapter_dir(ref, hub) for _, ref in pairs]
    base_dir = resolve_model_dir(base, base_hub(hub))
    given = stage or default_stage()
    try:
        report = deploy_adapters(
            opts,
            engine,
            [(n, r, d) for (n, r), d in zip(pairs, dirs)],
            (base_dir, base),
            given,
            replace_taken=replace,
            verify=not no_verify,
            keep_on_failure=keep_on_failure,
            models=models,
            on_step=out.info,
        )
    except NotServedError as err:
        report = getattr(err, "report", None)
        if report is None:
            raise
        out.fail(report.to_dict(), lambda console: _render(console, report, given), err)
    out.result(report.to_dict(), lambda console: _render(console, report, given))


def as_staged(path: str | None, stage: Path) -> str:
    """A path the server loads, under ``stage`` as the user named it (``./staged/upper-…``) when it
    lies there; otherwise as the server has it. The JSON keeps the server's path."""
    if not path:
        return ""
    try:
        rel = Path(path).relative_to(stage.expanduser().resolve())
    except ValueError:
        return path
    return str(stage / rel)


def _render(console, report, stage: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{report.endpoint} ({report.engine} {report.server_version or ''})".strip())
    for col in ("name", "adapter", "check", "loaded from", "verify"):
        table.add_column(col, overflow="fold")
    verdicts = {r.name: r.verdict for r in report.verify.results} if report.verify else {}
    for d in report.adapters:
        table.add_row(
            Text(d.name),
            Text(d.adapter),
            d.verdict + (" -> converted" if d.converted else ""),
            Text(as_staged(d.path, stage)),
            verdicts.get(d.name, "skipped"),
        )
    console.print(table)
    for note in report.notes:
        console.print(Text(note, style="dim"))


def undeploy_cmd(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Served adapter names to unload.")],
    endpoint: EndpointArg,
    engine: EngineOpt = "vllm",
    stage: StageOpt = None,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
) -> None:
    """Unload adapters from a running server (vLLM /v1/unload_lora_adapter, SGLang
    /unload_lora_adapter); every NAME must be served, checked before any is unloaded."""
    from adapterctl.core.serve.deploy import undeploy_adapters

    out = get_output()
    done = undeploy_adapters(
        _opts(endpoint, api_key, timeout), engine_name(engine), names, stage or default_stage()
    )
    out.result(
        {"endpoint": endpoint, "unloaded": done},
        lambda console: console.print(f"unloaded: {', '.join(done)}"),
    )


def ls_cmd(
    endpoint: EndpointArg,
    stage: StageOpt = None,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
) -> None:
    """What a running server serves (/v1/models): its base and its adapters, with the local adapter
    each was deployed from where `adapterctl deploy` recorded it (in --stage)."""
    from adapterctl.core.serve.deploy import list_served

    out = get_output()
    rows = list_served(_opts(endpoint, api_key, timeout), stage or default_stage())
    out.result(
        {"endpoint": endpoint, "models": [r.to_dict() for r in rows]},
        lambda console: _render_ls(console, rows, stage or default_stage()),
    )


def _render_ls(console, rows, stage: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for col in ("name", "kind", "loaded from", "deployed from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        kind = "base" if r.parent is None else f"adapter of {r.parent}"
        table.add_row(Text(r.name), Text(kind), Text(as_staged(r.root, stage)), Text(r.adapter or ""))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(
        "deploy",
        epilog=examples(
            "adapterctl deploy --endpoint http://127.0.0.1:8000 --lora dragon=./dragon-dora",
            "adapterctl deploy --endpoint http://gpu1:8000 --lora a=user/lora-a --stage /shared/adapters --replace",
            "adapterctl deploy --endpoint http://127.0.0.1:30000 --engine sglang --lora a=./lora-a --no-verify",
        ),
    )(deploy_cmd)


def register_undeploy(app: typer.Typer) -> None:
    app.command(
        "undeploy",
        epilog=examples(
            "adapterctl undeploy --endpoint http://127.0.0.1:8000 dragon",
            "adapterctl undeploy --endpoint http://127.0.0.1:30000 --engine sglang a b",
        ),
    )(undeploy_cmd)


def register_ls(app: typer.Typer) -> None:
    app.command(
        "ls",
        epilog=examples(
            "adapterctl ls --endpoint http://127.0.0.1:8000",
            "adapterctl --json ls --endpoint http://127.0.0.1:8000 --stage /shared/adapters",
        ),
    )(ls_cmd)
