"""The options and help text several commands share, as ``Annotated`` types: one definition (name,
help, panel, validation) per option, used by every command that takes it. Kept free of heavy
imports (``--help`` imports this module).

A flag means one thing in every command. ``-a/--adapter ADAPTER[=WEIGHT]`` is an adapter and its
weight everywhere (``attach ./base ./a ./b=0.5``, ``merge ./base ./a=0.7 ./b=0.3``, ``generate -a
./b=0.5``): the weight sits next to the adapter it scales, so it cannot drift out of step with the
adapter list the way a separate list of weights can. A served adapter's name goes as ``--lora
NAME=ADAPTER`` (vLLM's spelling) in serve and verify; ``--endpoint`` is a model server, ``--hub-url``
the Hub; ``--engine`` takes the one vocabulary of :mod:`adapterctl.core.engine_rules.names`.

Older spellings (``--weight``, ``--weights``, ``serve/verify -a NAME=ADAPTER``, ``push --endpoint``,
engine aliases) still work until :data:`REMOVED_IN`, hidden from ``--help``, each with a warning
naming the new spelling (:func:`deprecated`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from adapterctl import __version__
from adapterctl.errors import UsageError, exit_codes_line
from adapterctl.io.dtypes import check_dtype, dtype_choices

PANEL_HUB = "Hub"
PANEL_BASE = "Base model placement"
PANEL_OUTPUT = "Output"
PANEL_ADAPTERS = "Adapters"


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


#: the release that removes the deprecated spellings: the next minor version after this one
REMOVED_IN = _next_minor(__version__)


def deprecated(old: str, new: str) -> None:
    """Warn (stderr, and ``--json``'s warnings where the command has them) that ``old`` is an
    older spelling of ``new`` and when it goes."""
    from adapterctl.cli.output import get_output

    get_output().deprecated(f"{old} is deprecated and will be removed in {REMOVED_IN}: write {new}")


def examples(*lines: str) -> str:
    """A command's epilog: example invocations and the exit codes (Typer's markdown mode)."""
    return "**Examples**\n\n" + "\n".join(f"* `{line}`" for line in lines) + "\n\n" + exit_codes_line()


# ----- dtype: validated against the one dtype table (io/dtypes.py) ----------------------------
def _dtype_check(auto: bool):
    def check(ctx: typer.Context, value: str | None) -> str | None:
        return value if ctx.resilient_parsing else check_dtype(value, auto=auto)  # not while completing

    return check


def dtype_option(help: str, panel: str, auto: bool = True):
    """A ``--dtype`` option whose values come from the dtype table (with ``auto`` where allowed),
    for ``Annotated[str | None, dtype_option(...)]`` (written out, so type checkers see the type)."""
    choices = "|".join(dtype_choices(auto))
    return typer.Option(
        "--dtype",
        metavar="DTYPE",
        help=f"{help}: {choices}.",
        rich_help_panel=panel,
        callback=_dtype_check(auto),
    )


#: the base's dtype when it is loaded (attach, generate)
Dtype = Annotated[str | None, dtype_option("Base dtype", PANEL_BASE)]

# ----- base placement (attach, generate, and any command that loads a base) ------------------
DeviceMap = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="auto|cpu|cuda|balanced|sequential, or a JSON object module -> device (accelerate).",
        rich_help_panel=PANEL_BASE,
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Per-device limits, e.g. 0=10GiB,cpu=30GiB (or JSON).",
        rich_help_panel=PANEL_BASE,
    ),
]
OffloadFolder = Annotated[
    str | None,
    typer.Option("--offload-folder", help="Folder for layers offloaded to disk.", rich_help_panel=PANEL_BASE),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize", help="Load the base with bitsandbytes: nf4|fp4|int8.", rich_help_panel=PANEL_BASE
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let transformers run the Python code of a model repo whose "
        "config.json has auto_map (off by default: read that code first).",
        rich_help_panel=PANEL_BASE,
    ),
]

# ----- the Hub --------------------------------------------------------------------------------
Revision = Annotated[
    str | None,
    typer.Option(
        "--revision",
        help="Hub revision (branch, tag or commit) of the adapter/model; also `user/repo@rev`.",
        rich_help_panel=PANEL_HUB,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Hub token (default: HF_TOKEN or the saved login). Never printed.",
        rich_help_panel=PANEL_HUB,
        show_default=False,
    ),
]
HubUrl = Annotated[
    str | None,
    typer.Option(
        "--hub-url",
        metavar="URL",
        help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co).",
        rich_help_panel=PANEL_HUB,
        show_default=False,
    ),
]


# ----- other engines: vLLM's offline engine, an OpenAI-compatible server (generate, verify) -----
PANEL_ENGINE = "Engine"
EngineName = Annotated[
    str,
    typer.Option(
        "--engine",
        metavar="ENGINE",
        help="adapterctl: our engine, in this process; vllm: vLLM's "
        "offline engine (run adapterctl with the python vLLM is installed in); ray (generate): "
        "vLLM replicas on Ray Data.",
        rich_help_panel=PANEL_ENGINE,
    ),
]


def engine_names(values: list[str] | str | None, flag: str = "--engine") -> list[str]:
    """``--engine``/``--for`` values (repeatable, comma-separated) in the one vocabulary: older
    spellings warn and become the engine's name; which ones a command takes is core's to say."""
    from adapterctl.core.engine_rules.names import canonical_engine

    items = [values] if isinstance(values, str) else list(values or [])
    out = []
    for text in (t.strip() for item in items for t in item.split(",") if t.strip()):
        name, old = canonical_engine(text)
        if old:
            deprecated(f"{flag} {text}", f"{flag} {name}")
        out.append(name)
    return out


def engine_name(value: str) -> str:
    """One ``--engine`` value in the one vocabulary (see :func:`engine_names`)."""
    names = engine_names(value)
    if len(names) != 1:
        raise UsageError(f"--engine {value!r}: give one engine", hint="e.g. --engine vllm")
    return names[0]


TensorParallel = Annotated[
    int | None,
    typer.Option(
        "--tensor-parallel-size",
        help="vLLM (each Ray replica): GPUs each model is split over (tensor parallel).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
PipelineParallel = Annotated[
    int | None,
    typer.Option(
        "--pipeline-parallel-size",
        help="vLLM (each Ray replica): pipeline stages (pipeline parallel).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
GpuMemory = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-utilization",
        help="vLLM: share of GPU memory it may take (on a CPU build: of "
        "RAM, for its KV cache); default vLLM's.",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDRESS",
        help="--engine ray: the Ray cluster to join (HOST:PORT, ray://HOST:PORT or auto; default: "
        "a local Ray started for the run and stopped after).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
Replicas = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        help="--engine ray: vLLM replicas (Ray Data actors) running the prompts; default 1.",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
RayStage = Annotated[
    Path | None,
    typer.Option(
        "--stage",
        metavar="DIR",
        help="--engine ray: where adapters are staged (checked, converted where exact) for every "
        "node to read; a folder they all see (default: a temporary folder, removed after).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        metavar="URL",
        help="Run the prompts on an OpenAI-compatible server (vLLM, "
        "SGLang, llama.cpp, LoRAX, TGI) at URL; adapters go by their served names.",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
ServedModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="--endpoint: the base model's served name (default: BASE, or the server's only model).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
Concurrency = Annotated[
    int,
    typer.Option(
        "--concurrency", help="--endpoint: requests in flight at once.", rich_help_panel=PANEL_ENGINE
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", help="--endpoint: seconds to wait for one answer.", rich_help_panel=PANEL_ENGINE
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="ADAPTERCTL_API_KEY",
        show_envvar=True,
        show_default=False,
        help="--endpoint: the server's API key (sent as a Bearer token). Never printed.",
        rich_help_panel=PANEL_ENGINE,
    ),
]


def hub_options(revision: str | None, token: str | None, endpoint: str | None = None):
    """Hub settings for io.resolve/io.hub: messages go to stderr, bars follow --quiet."""
    from adapterctl.cli.output import get_output
    from adapterctl.io.hub.ref import HubOptions

    out = get_output()
    return HubOptions(
        revision=revision, token=token, endpoint=endpoint, progress=not out.settings.quiet, log=out.info
    )


def placement(dtype, device_map, max_memory, offload_folder, quantize, trust_remote_code):
    """The base placement options as core's Placement."""
    from adapterctl.core.runtime.session import Placement

    return Placement(dtype or "auto", device_map, max_memory, offload_folder, quantize, trust_remote_code)


# ----- adapters: -a/--adapter ADAPTER[=WEIGHT] -------------------------------------------------
def adapter_option(help: str):
    """``-a/--adapter ADAPTER[=WEIGHT]`` (repeatable): the same flag, the same syntax, in every
    command that takes it; ``help`` says what the command does with it."""
    return Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            "-a",
            metavar="ADAPTER[=WEIGHT]",
            show_default=False,
            rich_help_panel=PANEL_ADAPTERS,
            help=help,
        ),
    ]


# ----- weights: ADAPTER=WEIGHT ------------------------------------------------------------------
def split_weight(text: str) -> tuple[str, float | None]:
    """``ADAPTER=WEIGHT`` -> (ADAPTER, WEIGHT); ``ADAPTER`` -> (ADAPTER, None). A path may itself
    contain '=': an existing path is taken whole, and only a number after the last '=' is a weight."""
    ref, sep, weight = text.rpartition("=")
    if not sep or not ref or Path(text).expanduser().exists():
        return text, None
    try:
        value = float(weight)
    except ValueError:
        return text, None
    if not math.isfinite(value):
        raise UsageError(
            f"{text!r}: the weight {weight!r} is not a finite number",
            hint="Write ADAPTER=WEIGHT with a number, e.g. ./lora-b=0.5.",
        )
    return ref, value


def adapter_weights(
    texts: list[str], legacy: list[float] | None = None, legacy_flag: str = "--weights"
) -> tuple[list[str], list[float]]:
    """(references, weights) from ``ADAPTER[=WEIGHT]`` texts, or from the deprecated separate list
    ``legacy`` (one weight per adapter, in order)."""
    pairs = [split_weight(t) for t in texts]
    refs = [ref for ref, _ in pairs]
    if not legacy:
        return refs, [1.0 if w is None else w for _, w in pairs]
    if any(w is not None for _, w in pairs):
        raise UsageError(
            f"weights given twice: as ADAPTER=WEIGHT and with {legacy_flag}",
            hint="Write ADAPTER=WEIGHT only.",
        )
    if len(legacy) != len(refs):
        raise UsageError(
            f"{legacy_flag} has {len(legacy)} values for {len(refs)} adapters",
            hint="Write ADAPTER=WEIGHT instead, e.g. ./lora-a=0.7 ./lora-b=0.3.",
        )
    deprecated(legacy_flag, f"ADAPTER=WEIGHT (e.g. {refs[-1]}={legacy[-1]:g})")
    return refs, [float(w) for w in legacy]


# ----- served adapters: --lora NAME=ADAPTER (serve, verify) ------------------------------------
Lora = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        metavar="NAME=ADAPTER",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="A served adapter: its NAME on the server and the adapter folder or Hub id (vLLM's "
        "spelling; repeatable).",
    ),
]


def _named(text: str) -> tuple[str | None, str]:
    """``NAME=ADAPTER`` or ``ADAPTER`` (an existing path is taken whole: it may hold '=')."""
    name, sep, ref = text.partition("=")
    if not sep or not name or not ref or Path(text).expanduser().exists():
        return None, text
    return name, ref


def served_adapters(
    lora: list[str] | None, adapters: list[str] | None, command: str
) -> list[tuple[str, str]]:
    """(served name, adapter reference) from ``--lora NAME=ADAPTER`` and ``-a ADAPTER`` (named by
    the one naming rule); ``-a NAME=ADAPTER``, the older spelling, still works with a warning."""
    from adapterctl.core.runtime.session import adapter_names

    pairs = [_named(text) for text in lora or []]
    for text in adapters or []:
        ref, weight = split_weight(text)
        if weight is not None and weight != 1:
            raise UsageError(
                f"-a {text}: {command} serves each adapter alone, unweighted",
                hint="Drop =WEIGHT; name the served adapter with --lora NAME=ADAPTER.",
            )
        name, ref = _named(ref)
        if name is not None:
            deprecated(f"{command} -a NAME=ADAPTER ({text})", f"--lora {text}")
        pairs.append((name, ref))
    names = adapter_names([r for _, r in pairs], [n for n, _ in pairs])
    return [(n, r) for n, (_, r) in zip(names, pairs)]
