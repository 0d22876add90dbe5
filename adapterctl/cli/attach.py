"""``adapterctl attach``: load a base model, attach LoRA adapters, optionally try a prompt."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli.options import (
    PANEL_ADAPTERS,
    DeviceMap,
    Dtype,
    MaxMemory,
    OffloadFolder,
    Quantize,
    Revision,
    Token,
    TrustRemoteCode,
    adapter_weights,
    examples,
    hub_options,
    placement,
    split_weight,
)
from adapterctl.cli.output import get_output

PANEL_PROMPT = "Prompt"


def attach_cmd(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="[BASE] ADAPTER[=WEIGHT] [ADAPTER[=WEIGHT]...]",
            help="Base model folder or Hub id "
            "(optional: defaults to the adapter's base_model_name_or_path), then adapter folders or Hub "
            "ids, each optionally with =WEIGHT, its weight in the active sum (default 1).",
        ),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="The base model, when the first argument should not be taken as one.",
            rich_help_panel=PANEL_ADAPTERS,
        ),
    ] = None,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="Adapter name (repeat, one per adapter; default: from its folder or Hub id).",
            rich_help_panel=PANEL_ADAPTERS,
        ),
    ] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", hidden=True)] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            help="Generate a greedy completion (repeat for several prompts).",
            rich_help_panel=PANEL_PROMPT,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.", rich_help_panel=PANEL_PROMPT)
    ] = 32,
    dtype: Dtype = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
    quantize: Quantize = None,
    trust_remote_code: TrustRemoteCode = False,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Load a base model and attach LoRA adapters (no PEFT); print what was attached, and with
    --prompt a greedy completion: the quick way to try an adapter."""
    from adapterctl.core.runtime.session import (
        AdapterChoice,
        open_session,
        split_base_and_adapters,
        summarize,
    )

    out = get_output()
    if base is None and paths and split_weight(paths[0])[1] is not None:
        base_ref, texts = None, list(paths)  # a weighted first argument is an adapter
    else:
        base_ref, texts = split_base_and_adapters(list(paths), base)
    refs, weights = adapter_weights(texts, weight, "--weight")
    choices = [AdapterChoice(r, w) for r, w in zip(refs, weights)]
    with out.status("loading"):
        session = open_session(
            base_ref,
            choices,
            names=list(name) if name else None,
            placement=placement(dtype, device_map, max_memory, offload_folder, quantize, trust_remote_code),
            hub=hub_options(revision, token),
            on_step=out.info,
        )
    for a in session.adapters:
        for text in a.warnings:
            out.warn(f"{a.name}: {text}")
    completions = []
    if prompt:
        from adapterctl.core.generate.textgen import greedy_complete

        tokenizer = session.require_tokenizer("--prompt cannot be used")
        with out.status("generating"):
            completions = greedy_complete(session.base.model, tokenizer, list(prompt), max_new_tokens)
    summary = summarize(session, completions)
    out.result(summary.to_dict(), lambda console: render(console, summary.to_dict()))


def render(console, data: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = data["base"]
    devices = ", ".join(f"{d}: {n:,}" for d, n in b["devices"].items())
    console.print(
        f"[bold]base[/bold] {escape(b['path'])} ({b['dtype']}"
        f"{', ' + b['quantize'] if b['quantize'] else ''}; params per device {devices}; "
        f"loaded in {b['load_seconds']:.2f}s)"
    )
    t = Table(
        title=f"{len(data['adapters'])} adapter(s) attached in {data['attach_seconds']:.2f}s",
        title_justify="left",
    )
    for col in ("name", "source", "modules", "parameters", "devices", "extras", "weight"):
        t.add_column(col, justify="right" if col in ("parameters", "weight") else "left")
    for a in data["adapters"]:
        mods = ", ".join(f"{k} x{v}" for k, v in a["modules"].items()) or "-"
        extras = [f"saved: {', '.join(a['saved_modules'])}"] if a["saved_modules"] else []
        extras += [f"{len(a['replaced_parameters'])} replaced params"] if a["replaced_parameters"] else []
        extras += [f"tokens: {', '.join(a['trainable_tokens'])}"] if a["trainable_tokens"] else []
        extras += [f"{a['init_recomputed']} residual"] if a["init_recomputed"] else []
        weight = data["active"].get(a["name"])
        t.add_row(
            escape(a["name"]),
            escape(a["source"]),
            mods,
            f"{a['parameters']:,}",
            ", ".join(a["devices"]),
            escape("; ".join(extras)) or "-",
            "inactive" if weight is None else f"{weight:g}",
        )
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
            "adapterctl --json attach ./base ./lora-a ./lora-b=0.5 --quantize nf4",
        ),
    )(attach_cmd)
