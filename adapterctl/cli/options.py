"""The options and help text several commands share, as ``Annotated`` types: one definition (name,
help, panel, validation) per option, used by every command that takes it. Kept free of heavy
imports (``--help`` imports this module).

Weights have one syntax everywhere: ``ADAPTER=WEIGHT`` (``attach ./base ./a ./b=0.5``, ``merge
./base ./a=0.7 ./b=0.3``, ``generate --adapter ./b=0.5``). The weight sits next to the adapter it
scales, so it cannot drift out of step with the adapter list the way a separate, positional list
of weights can (``--weight``, ``--weights``: still accepted, deprecated).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from adapterctl.errors import EXIT_CODES, UsageError
from adapterctl.io.dtypes import check_dtype, dtype_choices

PANEL_HUB = "Hub"
PANEL_BASE = "Base model placement"
PANEL_OUTPUT = "Output"
PANEL_ADAPTERS = "Adapters"

#: short names of the exit codes for command epilogs (the full text is in `adapterctl --help`)
_SHORT = {
    1: "internal error",
    2: "usage",
    3: "not found",
    4: "invalid input",
    5: "unsupported",
    6: "incompatible with the base",
    7: "missing dependency",
    8: "Hub/network",
    9: "I/O",
    130: "interrupted",
}
EXIT_CODES_LINE = (
    "**Exit codes**: "
    + ", ".join(f"{code} {_SHORT.get(code, text)}" for code, text in EXIT_CODES.items())
    + " (details: `adapterctl --help`)."
)


def examples(*lines: str) -> str:
    """A command's epilog: example invocations and the exit codes (Typer's markdown mode)."""
    return "**Examples**\n\n" + "\n".join(f"* `{line}`" for line in lines) + "\n\n" + EXIT_CODES_LINE


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
Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
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
        "offline engine (run adapterctl with the python vLLM is installed in).",
        rich_help_panel=PANEL_ENGINE,
    ),
]
TensorParallel = Annotated[
    int | None,
    typer.Option(
        "--tensor-parallel-size",
        help="vLLM: GPUs each model is split over (tensor parallel).",
        rich_help_panel=PANEL_ENGINE,
        show_default=False,
    ),
]
PipelineParallel = Annotated[
    int | None,
    typer.Option(
        "--pipeline-parallel-size",
        help="vLLM: pipeline stages (pipeline parallel).",
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


# ----- weights: ADAPTER=WEIGHT ------------------------------------------------------------------
def deprecated_weights_help(form: str) -> str:
    """Help of an older weights option: still accepted, with a warning."""
    return (
        f"Deprecated (still works): one weight per adapter, {form}. Write ADAPTER=WEIGHT "
        "instead, e.g. ./lora-b=0.5."
    )


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
    from adapterctl.cli.output import get_output

    get_output().warn(
        f"{legacy_flag} is deprecated: write ADAPTER=WEIGHT instead (e.g. {refs[-1]}={legacy[-1]:g})"
    )
    return refs, [float(w) for w in legacy]
