"""``adapterctl convert``: PiSSA/OLoRA to LoRA, rank reduction, extraction, format and dtype."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli.options import PANEL_OUTPUT as PANEL_OUT
from adapterctl.cli.options import Revision, Token, dtype_option, engine_names, examples, hub_options
from adapterctl.cli.output import get_output
from adapterctl.core.engine_rules.names import SERVING
from adapterctl.errors import UsageError

PANEL_MODE = "Conversion (pick one; --dtype, --for and --to-safetensors combine)"
CastDtype = Annotated[str | None, dtype_option("Cast the written tensors", PANEL_MODE, auto=False)]


SourceOpt = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="Adapter folder (TRAINED / ADAPTER), or the fine-tuned model with --extract. Hub ids work too.",
    ),
]
PissaInitOpt = Annotated[
    str | None,
    typer.Option(
        "--pissa-init",
        metavar="INIT",
        help="Initial adapter saved before training: convert a "
        "PiSSA/OLoRA/CorDA/LoRA-GA adapter to plain LoRA.",
        rich_help_panel=PANEL_MODE,
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        metavar="BASE",
        help="Base model: recompute the PiSSA (full SVD) / OLoRA initial weights instead of --pissa-init.",
        rich_help_panel=PANEL_MODE,
    ),
]
RankOpt = Annotated[
    int | None,
    typer.Option(
        "--rank",
        metavar="R",
        help="Target rank (rank reduction, or the rank of --extract).",
        rich_help_panel=PANEL_MODE,
    ),
]
EnergyOpt = Annotated[
    float | None,
    typer.Option(
        "--energy",
        metavar="E",
        help="Keep this fraction of each module's squared Frobenius norm, e.g. 0.95 (per-module ranks).",
        rich_help_panel=PANEL_MODE,
    ),
]
ExtractOpt = Annotated[
    str | None,
    typer.Option(
        "--extract",
        metavar="BASE",
        help="Extract a LoRA from the fully fine-tuned model SOURCE against this base (needs --rank).",
        rich_help_panel=PANEL_MODE,
    ),
]
SkipUnfactorableOpt = Annotated[
    bool,
    typer.Option(
        "--skip-unfactorable",
        help="With --extract: drop changed norms/biases/resized embeddings "
        "instead of saving them as modules_to_save.",
        rich_help_panel=PANEL_MODE,
    ),
]
ToSafetensorsOpt = Annotated[
    bool,
    typer.Option(
        "--to-safetensors",
        help="Rewrite a legacy adapter_model.bin as safetensors (loaded with weights_only=True).",
        rich_help_panel=PANEL_MODE,
    ),
]
ForEngineOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--for",
        metavar="ENGINE",
        help="Rewrite the adapter so that this engine serves it as "
        f"trained ({', '.join(SERVING)} or all): DoRA to LoRA, extras to "
        "full-rank LoRA, scales baked; or refuse, naming what no LoRA can hold there.",
        rich_help_panel=PANEL_MODE,
    ),
]
DropUnsupportedOpt = Annotated[
    bool,
    typer.Option(
        "--drop-unsupported",
        help="With --for: drop what the engine cannot serve (lora_B biases, "
        "norm weights, ...) and report what that changes.",
        rich_help_panel=PANEL_MODE,
    ),
]
ForServingOpt = Annotated[
    bool,
    typer.Option(
        "--for-serving",
        help="Alias of --for all --drop-unsupported: what every engine serves, "
        "the rest dropped and reported.",
        rich_help_panel=PANEL_MODE,
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="FORMAT",
        help="Write another engine's adapter: gguf (llama.cpp, "
        "OUT is a .gguf file) or mlx (MLX-LM folder). --base names the base model.",
        rich_help_panel=PANEL_OUT,
    ),
]
FromFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="FORMAT",
        help="SOURCE is a gguf (llama.cpp) or mlx (MLX-LM) adapter: write it as PEFT (gguf needs --base).",
        rich_help_panel=PANEL_MODE,
    ),
]
OuttypeOpt = Annotated[
    str,
    typer.Option(
        "--outtype",
        metavar="TYPE",
        help="With --to gguf: f32, f16, bf16 or q8_0.",
        rich_help_panel=PANEL_OUT,
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing non-empty OUT.", rich_help_panel=PANEL_OUT)
]


def convert_cmd(
    source: SourceOpt,
    output: Annotated[str, typer.Argument(metavar="OUT", help="Output adapter folder (written atomically).")],
    pissa_init: PissaInitOpt = None,
    base: BaseOpt = None,
    rank: RankOpt = None,
    energy: EnergyOpt = None,
    extract: ExtractOpt = None,
    skip_unfactorable: SkipUnfactorableOpt = False,
    to_safetensors: ToSafetensorsOpt = False,
    dtype: CastDtype = None,
    for_engine: ForEngineOpt = None,
    drop_unsupported: DropUnsupportedOpt = False,
    for_serving: ForServingOpt = False,
    to: ToOpt = None,
    from_format: FromFormatOpt = None,
    outtype: OuttypeOpt = "f32",
    force: ForceOpt = False,
    eval_data: Annotated[
        str | None,
        typer.Option(
            "--eval",
            metavar="DATA",
            show_default=False,
            rich_help_panel=PANEL_OUT,
            help="After writing, measure OUT against SOURCE on DATA (as `adapterctl eval --data`): "
            "one line, and `eval` in --json. Needs the base (--base or the adapter's).",
        ),
    ] = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Rewrite an adapter as an equivalent (or rank-reduced) PEFT LoRA adapter, or extract one."""
    from adapterctl.core.convert.pipeline import ConvertRequest, check_request

    out = get_output()
    req = ConvertRequest(
        source,
        output,
        force,
        pissa_init,
        base,
        extract,
        rank,
        energy,
        dtype,
        for_serving,
        to_safetensors,
        skip_unfactorable,
        source_name=source,
        base_name=base or extract,
        to=to,
        from_format=from_format,
        outtype=outtype,
        for_engine=tuple(engine_names(for_engine, "--for")),
        drop_unsupported=drop_unsupported,
    )
    if outtype not in ("f32", "f16", "bf16", "q8_0"):
        raise UsageError(f"--outtype {outtype!r} is not supported", hint="Use f32, f16, bf16 or q8_0.")
    if eval_data is not None and (extract or to or from_format):
        raise UsageError(
            "--eval measures an adapter written as a PEFT adapter",
            hint="Drop --eval with --extract, --to or --from; run `adapterctl eval` on the result.",
        )
    check_request(req)  # usage errors before any download
    req = _resolve(req, revision, token)
    from adapterctl.core.convert.pipeline import run_convert

    if req.extract_base:
        with out.progress("extracting", total=None) as advance:
            result = run_convert(req, lambda name, i, n: advance(1, total=n))
    else:
        with out.status("converting"):
            result = run_convert(req)
    for note in result.notes:
        out.warn(note)
    if req.to:
        from adapterctl.cli.convert_formats import render_export

        out.result(result.to_dict(), lambda console: render_export(console, result))
        return
    if eval_data is None:
        out.result(result.to_dict(), lambda console: render(console, result))
        return
    from adapterctl.cli.eval import eval_copy, eval_line

    figures = eval_copy(req.base, [(req.source, 1.0)], output, eval_data, None)

    def both(console) -> None:
        render(console, result)
        console.print(eval_line(figures), markup=False)

    out.result({**result.to_dict(), "eval": figures}, both)


def _resolve(req, revision, token):
    from dataclasses import replace

    from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

    hub = hub_options(revision, token)
    plain = hub_options(None, token)
    if req.to or req.from_format:
        from adapterctl.cli.convert_formats import resolve_format_request

        return resolve_format_request(req, hub, plain)
    if req.extract_base:
        return replace(
            req,
            source=str(resolve_model_dir(req.source, hub)),
            extract_base=str(resolve_model_dir(req.extract_base, plain)),
        )
    return replace(
        req,
        source=str(resolve_adapter_dir(req.source, hub)),
        init=str(resolve_adapter_dir(req.init, plain)) if req.init else None,
        base=str(resolve_model_dir(req.base, plain)) if req.base else None,
        base_hub=plain,
    )


def render(console, r) -> None:
    from rich.markup import escape
    from rich.table import Table

    pattern = f", rank_pattern: {len(r.rank_pattern)} entries" if r.rank_pattern else ""
    console.print(
        f"[green]wrote[/green] {escape(str(r.output))} ({', '.join(r.steps)}): {r.num_modules} "
        f"modules, r={r.r}, lora_alpha={r.lora_alpha:g}"
        f"{', rsLoRA' if r.use_rslora else ''}{pattern}, {', '.join(r.dtypes)}"
    )
    if r.modules:
        t = Table(title="per-module result", title_justify="left")
        for col in ("module", "r before", "r after", "rel. error", "energy kept"):
            t.add_column(col, justify="left" if col == "module" else "right")
        for m in r.modules:
            t.add_row(
                escape(m.module),
                str(m.r_before),
                str(m.r_after),
                "-" if m.rel_error is None else f"{m.rel_error:.3e}",
                "-" if m.energy is None else f"{m.energy:.4f}",
            )
        console.print(t)
    for item in r.removed:
        console.print(f"[yellow]removed[/yellow] {escape(str(item))}")


def register(app: typer.Typer) -> None:
    app.command(
        "convert",
        epilog=examples(
            "adapterctl convert --pissa-init ./pissa-init ./pissa-trained ./lora",
            "adapterctl convert --rank 8 ./my-lora ./my-lora-r8",
            "adapterctl convert --extract ./base-model ./finetuned-model ./extracted --rank 32",
            "adapterctl convert ./my-lora my-lora.gguf --to gguf --base ./base-model",
            "adapterctl convert ./my-lora ./my-lora-mlx --to mlx --base ./base-model",
            "adapterctl convert --from gguf --base ./base-model my-lora.gguf ./my-lora",
            "adapterctl convert ./dora-adapter ./for-vllm --for vllm --base ./base-model --rank 64",
        ),
    )(convert_cmd)
