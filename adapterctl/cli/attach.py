"""``adapterctl attach``: load a base model, attach LoRA adapters, optionally try a prompt."""

from __future__ import annotations

import typer

from adapterctl.cli.common import (
    PANEL_BASE,
    RevisionOpt,
    TokenOpt,
    TrustRemoteCodeOpt,
    examples,
    hub_options,
)
from adapterctl.cli.output import get_output

PANEL_PROMPT = "Prompt"
PANEL_ADAPTERS = "Adapters"

DtypeOpt = typer.Option("auto", "--dtype", help="Base dtype: auto|float32|bfloat16|float16.",
                        rich_help_panel=PANEL_BASE)
DeviceMapOpt = typer.Option(None, "--device-map", help="auto|cpu|cuda|balanced|sequential, or a "
                            "JSON object module -> device (accelerate).", rich_help_panel=PANEL_BASE)
MaxMemoryOpt = typer.Option(None, "--max-memory", help="Per-device limits, e.g. 0=10GiB,cpu=30GiB "
                            "(or JSON).", rich_help_panel=PANEL_BASE)
OffloadOpt = typer.Option(None, "--offload-folder", help="Folder for layers offloaded to disk.",
                          rich_help_panel=PANEL_BASE)
QuantizeOpt = typer.Option(None, "--quantize", help="Load the base with bitsandbytes: nf4|fp4|int8.",
                           rich_help_panel=PANEL_BASE)


def attach_cmd(
    paths: list[str] = typer.Argument(..., metavar="[BASE] ADAPTER [ADAPTER...]",
                                      help="Base model folder (optional: defaults to the adapter's "
                                      "base_model_name_or_path), then adapter folders or Hub ids."),
    base: str = typer.Option(None, "--base", help="The base model, when the first argument should "
                             "not be taken as one.", rich_help_panel=PANEL_ADAPTERS),
    name: list[str] = typer.Option(None, "--name", help="Adapter name (repeat, one per adapter).",
                                   rich_help_panel=PANEL_ADAPTERS),
    weight: list[float] = typer.Option(None, "--weight", help="Adapter weight in the active sum "
                                       "(repeat, one per adapter; default 1).",
                                       rich_help_panel=PANEL_ADAPTERS),
    prompt: list[str] = typer.Option(None, "--prompt", help="Generate a greedy completion (repeat "
                                     "for several prompts).", rich_help_panel=PANEL_PROMPT),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Tokens to generate.",
                                       rich_help_panel=PANEL_PROMPT),
    dtype: str = DtypeOpt,
    device_map: str = DeviceMapOpt,
    max_memory: str = MaxMemoryOpt,
    offload_folder: str = OffloadOpt,
    quantize: str = QuantizeOpt,
    trust_remote_code: bool = TrustRemoteCodeOpt,
    revision: str = RevisionOpt,
    token: str = TokenOpt,
) -> None:
    """Load a base model and attach LoRA adapters (no PEFT); print what was attached, and with
    --prompt a greedy completion: the quick way to try an adapter."""
    from adapterctl.core.engine.model import DTYPES
    from adapterctl.core.engine.session import Placement, open_session, split_base_and_adapters
    from adapterctl.errors import UsageError

    out = get_output()
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    base_ref, adapters = split_base_and_adapters(list(paths), base)
    placement = Placement(dtype, device_map, max_memory, offload_folder, quantize, trust_remote_code)
    with out.status("loading"):
        session = open_session(base_ref, adapters, name or None, weight or None, placement,
                               hub_options(revision, token), on_step=out.info)
    for report in session.reports:
        for text in report.warnings:
            out.warn(f"{report.name}: {text}")
    completions = []
    if prompt:
        completions = _complete(session, list(prompt), max_new_tokens, out)
    data = _summary(session, completions)
    out.result(data, lambda console: render(console, data))


def _complete(session, prompts, max_new_tokens, out):
    from adapterctl.core.generate.textgen import greedy_complete
    from adapterctl.errors import NotFoundError

    if session.base.tokenizer is None:
        raise NotFoundError(f"{session.base.path}: has no tokenizer, so --prompt cannot be used",
                            hint="Add the tokenizer files to the model folder.")
    with out.status("generating"):
        return greedy_complete(session.base.model, session.base.tokenizer, prompts, max_new_tokens)


def _summary(session, completions) -> dict:
    from adapterctl.core.engine.attach import active_adapters

    return {
        "base": {**session.base.to_dict(), "load_seconds": round(session.load_seconds, 3)},
        "adapters": [r.to_dict() for r in session.reports],
        "active": active_adapters(session.base.model),
        "attach_seconds": round(session.attach_seconds, 3),
        "completions": [c.to_dict() for c in completions],
    }


def render(console, data: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = data["base"]
    devices = ", ".join(f"{d}: {n:,}" for d, n in b["devices"].items())
    console.print(f"[bold]base[/bold] {escape(b['path'])} ({b['dtype']}"
                  f"{', ' + b['quantize'] if b['quantize'] else ''}; params per device {devices}; "
                  f"loaded in {b['load_seconds']:.2f}s)")
    t = Table(title=f"{len(data['adapters'])} adapter(s) attached in {data['attach_seconds']:.2f}s",
              title_justify="left")
    for col in ("name", "source", "modules", "parameters", "devices", "extras", "weight"):
        t.add_column(col, justify="right" if col in ("parameters", "weight") else "left")
    for a in data["adapters"]:
        mods = ", ".join(f"{k} x{v}" for k, v in a["modules"].items()) or "-"
        extras = [f"saved: {', '.join(a['saved_modules'])}"] if a["saved_modules"] else []
        extras += [f"{len(a['replaced_parameters'])} replaced params"] if a["replaced_parameters"] else []
        extras += [f"tokens: {', '.join(a['trainable_tokens'])}"] if a["trainable_tokens"] else []
        extras += [f"{a['init_recomputed']} residual"] if a["init_recomputed"] else []
        weight = data["active"].get(a["name"])
        t.add_row(escape(a["name"]), escape(a["source"]), mods, f"{a['parameters']:,}",
                  ", ".join(a["devices"]), escape("; ".join(extras)) or "-",
                  "inactive" if weight is None else f"{weight:g}")
    console.print(t)
    for c in data["completions"]:
        console.print(f"[bold]prompt[/bold] {escape(c['prompt'])}")
        console.print(f"[bold]completion[/bold] {escape(c['completion'])}")


def register(app: typer.Typer) -> None:
    app.command(
        "attach",
        epilog=examples(
            "adapterctl attach ./Llama-3.2-1B ./my-lora --prompt 'Hello'",
            "adapterctl attach ./my-lora --dtype bfloat16 --device-map auto",
            "adapterctl --json attach ./base ./lora-a ./lora-b --weight 1 --weight 0.5 --quantize nf4",
        ),
    )(attach_cmd)
