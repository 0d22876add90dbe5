"""``adapterctl serve``: check (and convert where needed) the adapters, then replace this process
with the engine's OpenAI-compatible server (vLLM or SGLang) started with the right flags."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adapterctl.cli.options import (
    Lora,
    Revision,
    Token,
    adapter_option,
    dtype_option,
    engine_name,
    examples,
    hub_options,
    served_adapters,
)
from adapterctl.cli.output import get_output
from adapterctl.core.engine_rules.names import SERVERS
from adapterctl.errors import UsageError

PANEL_SERVER = "Server"
if TYPE_CHECKING:  # adapter_option builds the Annotated at runtime; the checker reads its type
    Adapters = list[str] | None
else:
    Adapters = adapter_option("An adapter folder or Hub id to serve under its folder's name (repeatable).")


def default_convert_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "adapterctl" / "serve"


ExtraOpt = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[-- EXTRA...]",
        show_default=False,
        help="After `--`: more flags for the server, passed as they are (last, so they win).",
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option("--engine", metavar="ENGINE", help=" or ".join(SERVERS) + ".", rich_help_panel=PANEL_SERVER),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on.", rich_help_panel=PANEL_SERVER)]
PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on.", rich_help_panel=PANEL_SERVER)]
PythonOpt = Annotated[
    str | None,
    typer.Option(
        "--python",
        help="The python the engine is installed in (default: this one).",
        rich_help_panel=PANEL_SERVER,
        show_default=False,
    ),
]
ConvertDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--convert-dir",
        help="Where adapters converted for the engine are written (default: "
        "~/.cache/adapterctl/serve; reused by later runs).",
        show_default=False,
    ),
]
ServeDtype = Annotated[
    str | None,
    dtype_option(
        "The dtype the server runs the base in (auto: the checkpoint's, as adapterctl's engine)",
        PANEL_SERVER,
    ),
]
RuntimeLoraOpt = Annotated[
    bool,
    typer.Option(
        "--allow-runtime-lora",
        help="The server also takes adapters while it runs (`adapterctl deploy`; vLLM: "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).",
        rich_help_panel=PANEL_SERVER,
    ),
]
MaxLoraRankOpt = Annotated[
    int | None,
    typer.Option(
        "--max-lora-rank",
        help="The largest adapter rank the server takes (default: what the adapters need; with "
        "--allow-runtime-lora at least 64).",
        rich_help_panel=PANEL_SERVER,
        show_default=False,
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the server's command line and the converted adapters' paths; start nothing.",
    ),
]


def serve_cmd(
    base: Annotated[str, typer.Argument(metavar="BASE", help="Base model folder or Hub id.")],
    extra: ExtraOpt = None,
    lora: Lora = None,
    adapter: Adapters = None,
    engine: EngineOpt = "vllm",
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    python: PythonOpt = None,
    convert_dir: ConvertDirOpt = None,
    dry_run: DryRunOpt = False,
    dtype: ServeDtype = None,
    allow_runtime_lora: RuntimeLoraOpt = False,
    max_lora_rank: MaxLoraRankOpt = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Serve a base with adapters on vLLM or SGLang: each adapter is checked with the engine's
    rules first (converted where that is exact, refused otherwise), then this process becomes
    the engine's OpenAI-compatible server (signals go straight to it)."""
    from adapterctl.core.runtime.session import base_hub
    from adapterctl.core.serve.prepare import lora_limits, prepare_adapters
    from adapterctl.core.serve.server import (
        ServedAdapter,
        check_engine,
        check_served_names,
        extra_dtype,
        find_server_python,
        server_command,
    )
    from adapterctl.io.dtypes import resolve_dtype
    from adapterctl.io.folders.files import read_json_object
    from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

    out = get_output()
    engine = check_engine(engine_name(engine))
    if out.json and not dry_run:
        raise UsageError(
            "--json needs --dry-run", hint="serve becomes the server, whose logs are not one JSON document."
        )
    given = extra_dtype(list(extra or []))
    if dtype is not None and given is not None and given != dtype:
        raise UsageError(
            f"--dtype {dtype} and, after --, --dtype {given}: which one?",
            hint="give serve's --dtype alone (the engine is told it; adapterctl's checks use it too).",
        )
    pairs = served_adapters(lora, adapter, "serve")
    check_served_names([n for n, _ in pairs], base)
    python = python or (sys.executable if dry_run else find_server_python(engine, None))
    hub = hub_options(revision, token)
    dirs = [resolve_adapter_dir(ref, hub) for _, ref in pairs]
    base_dir = resolve_model_dir(base, base_hub(hub))
    prepared = prepare_adapters(
        engine,
        [(n, r, d) for (n, r), d in zip(pairs, dirs)],
        (base_dir, base),
        convert_dir or default_convert_dir(),
        out.info,
    )
    limits = server_limits(engine, lora_limits(engine, prepared), allow_runtime_lora, max_lora_rank)
    cmd = server_command(
        engine,
        python,
        base,
        [ServedAdapter(p.name, str(Path(p.path).resolve())) for p in prepared],
        limits.max_lora_rank,
        limits.max_loras,
        host=host,
        port=port,
        extra=list(extra or []),
        dtype=resolve_dtype(dtype, read_json_object(base_dir / "config.json", "model config.json")),
        runtime_lora=allow_runtime_lora,
    )
    if dry_run:
        doc = {
            "dry_run": True,
            "engine": engine,
            "command": cmd.argv,
            "command_line": cmd.text,
            "env": cmd.env,
            "limits": limits.to_dict(),
            "adapters": [p.to_dict() for p in prepared],
        }
        out.result(doc, lambda console: _render(console, cmd, prepared))
        return
    out.info(f"starting: {cmd.text}")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(
            cmd.argv[0], cmd.argv, {**os.environ, **cmd.env}
        )  # this process becomes the server: same pid, signals
    except OSError as err:
        from adapterctl.errors import MissingDependencyError

        raise MissingDependencyError(
            f"cannot start {cmd.argv[0]}: {err.strerror}", hint="Check --python."
        ) from err


def server_limits(engine: str, limits, runtime: bool, max_lora_rank: int | None):
    """The adapters' limits, widened for adapters deployed later (``--allow-runtime-lora``: room
    for rank 64 and 4 of them unless told) and by ``--max-lora-rank``."""
    from adapterctl.core.engine_rules.limits import LoraLimits

    rank, loras = limits.max_lora_rank, limits.max_loras
    if runtime:
        rank, loras = max(rank, 64), max(loras, 4)
    if max_lora_rank is not None:
        if max_lora_rank < limits.max_lora_rank:
            raise UsageError(
                f"--max-lora-rank {max_lora_rank} is below the rank the adapters need ({limits.max_lora_rank})"
            )
        rank = max_lora_rank
    if engine == "vllm":
        from adapterctl.core.engine_rules.vllm import MAX_LORA_RANKS

        if rank not in MAX_LORA_RANKS:
            raise UsageError(
                f"--max-lora-rank {rank}: vLLM takes one of {', '.join(map(str, MAX_LORA_RANKS))}"
            )
    return LoraLimits(rank, loras)


def _render(console, cmd, prepared) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text(cmd.text))
    if not prepared:
        return
    table = Table()
    for col in ("name", "adapter", "verdict", "served from"):
        table.add_column(col, overflow="fold")
    for p in prepared:
        table.add_row(
            Text(p.name),
            Text(p.source),
            p.verdict + (" -> converted" if p.converted else ""),
            Text(str(p.path)),
        )
    console.print(table)
    for p in prepared:
        if p.converted and p.notes:
            console.print(Text(f"{p.name}: {p.notes[0]}", style="dim"))


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        epilog=examples(
            "adapterctl serve ./base --lora upper=./upper-lora --dry-run",
            "adapterctl serve ./base --lora a=./lora-a -a user/lora-b --port 8001 --dtype bfloat16",
            "adapterctl serve ./base -a ./lora-a --engine sglang --python ~/sglang-env/bin/python",
            "adapterctl serve ./base --allow-runtime-lora --max-lora-rank 256 --python ~/vllm-env/bin/python",
        ),
    )(serve_cmd)
