"""``adapterctl convert``: PiSSA/OLoRA to LoRA, rank reduction, extraction, format and dtype."""

from __future__ import annotations

import typer

from adapterctl.cli.common import RevisionOpt, TokenOpt, examples, hub_options
from adapterctl.cli.output import get_output

PANEL_MODE = "Conversion (pick one; --dtype, --for and --to-safetensors combine)"
PANEL_OUT = "Output"


def convert_cmd(
    source: str = typer.Argument(..., metavar="SOURCE", help="Adapter folder (TRAINED / ADAPTER), "
                                 "or the fine-tuned model with --extract. Hub ids work too."),
    output: str = typer.Argument(..., metavar="OUT", help="Output adapter folder (written "
                                 "atomically)."),
    pissa_init: str = typer.Option(None, "--pissa-init", metavar="INIT", help="Initial adapter "
                                   "saved before training: convert a PiSSA/OLoRA/CorDA/LoRA-GA "
                                   "adapter to plain LoRA.", rich_help_panel=PANEL_MODE),
    base: str = typer.Option(None, "--base", metavar="BASE", help="Base model: recompute the "
                             "PiSSA (full SVD) / OLoRA initial weights instead of --pissa-init.",
                             rich_help_panel=PANEL_MODE),
    rank: int = typer.Option(None, "--rank", metavar="R", help="Target rank (rank reduction, or "
                             "the rank of --extract).", rich_help_panel=PANEL_MODE),
    energy: float = typer.Option(None, "--energy", metavar="E", help="Keep this fraction of each "
                                 "module's squared Frobenius norm, e.g. 0.95 (per-module ranks).",
                                 rich_help_panel=PANEL_MODE),
    extract: str = typer.Option(None, "--extract", metavar="BASE", help="Extract a LoRA from the "
                                "fully fine-tuned model SOURCE against this base (needs --rank).",
                                rich_help_panel=PANEL_MODE),
    skip_unfactorable: bool = typer.Option(False, "--skip-unfactorable", help="With --extract: "
                                           "drop changed norms/biases/resized embeddings instead "
                                           "of saving them as modules_to_save.",
                                           rich_help_panel=PANEL_MODE),
    to_safetensors: bool = typer.Option(False, "--to-safetensors", help="Rewrite a legacy "
                                        "adapter_model.bin as safetensors (loaded with "
                                        "weights_only=True).", rich_help_panel=PANEL_MODE),
    dtype: str = typer.Option(None, "--dtype", metavar="DTYPE",
                              help="Cast the written tensors: float32, bfloat16 or float16.", rich_help_panel=PANEL_MODE),
    for_engine: list[str] = typer.Option(None, "--for", metavar="ENGINE", help="Rewrite the "
                                         "adapter so that this engine serves it as trained "
                                         "(vllm, sglang, lorax, tgi, llama.cpp, mlx or all): "
                                         "DoRA to LoRA, extras to full-rank LoRA, scales baked; "
                                         "or refuse, naming what no LoRA can hold there.",
                                         rich_help_panel=PANEL_MODE),
    drop_unsupported: bool = typer.Option(False, "--drop-unsupported", help="With --for: drop "
                                          "what the engine cannot serve (lora_B biases, norm "
                                          "weights, ...) and report what that changes.",
                                          rich_help_panel=PANEL_MODE),
    for_serving: bool = typer.Option(False, "--for-serving", help="Alias of --for all "
                                     "--drop-unsupported: what every engine serves, the rest "
                                     "dropped and reported.", rich_help_panel=PANEL_MODE),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty OUT.",
                               rich_help_panel=PANEL_OUT),
    revision: str = RevisionOpt,
    token: str = TokenOpt,
) -> None:
    """Rewrite an adapter as an equivalent (or rank-reduced) PEFT LoRA adapter, or extract one."""
    from adapterctl.core.convert.pipeline import ConvertRequest, check_request

    out = get_output()
    req = ConvertRequest(source, output, force, pissa_init, base, extract, rank, energy, dtype,
                         for_serving, to_safetensors, skip_unfactorable, source_name=source,
                         base_name=base or extract, for_engine=tuple(for_engine or ()),
                         drop_unsupported=drop_unsupported)
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        from adapterctl.errors import UsageError

        raise UsageError(f"--dtype {dtype!r} is not supported", hint="Use float32, bfloat16 or "
                         "float16.")
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
    out.result(result.to_dict(), lambda console: render(console, result))


def _resolve(req, revision, token):
    from dataclasses import replace

    from adapterctl.io.resolve import resolve_adapter_dir, resolve_model_dir

    hub = hub_options(revision, token)
    plain = hub_options(None, token)
    if req.extract_base:
        return replace(req, source=str(resolve_model_dir(req.source, hub)),
                       extract_base=str(resolve_model_dir(req.extract_base, plain)))
    return replace(req, source=str(resolve_adapter_dir(req.source, hub)),
                   init=str(resolve_adapter_dir(req.init, plain)) if req.init else None,
                   base=str(resolve_model_dir(req.base, plain)) if req.base else None)


def render(console, r) -> None:
    from rich.markup import escape
    from rich.table import Table

    pattern = f", rank_pattern: {len(r.rank_pattern)} entries" if r.rank_pattern else ""
    console.print(f"[green]wrote[/green] {escape(str(r.output))} ({', '.join(r.steps)}): {r.num_modules} "
                  f"modules, r={r.r}, lora_alpha={r.lora_alpha:g}"
                  f"{', rsLoRA' if r.use_rslora else ''}{pattern}, {', '.join(r.dtypes)}")
    if r.modules:
        t = Table(title="per-module result", title_justify="left")
        for col in ("module", "r before", "r after", "rel. error", "energy kept"):
            t.add_column(col, justify="left" if col == "module" else "right")
        for m in r.modules:
            t.add_row(escape(m.module), str(m.r_before), str(m.r_after),
                      "-" if m.rel_error is None else f"{m.rel_error:.3e}",
                      "-" if m.energy is None else f"{m.energy:.4f}")
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
            "adapterctl convert ./dora-adapter ./for-vllm --for vllm --base ./base-model --rank 64",
        ),
    )(convert_cmd)
