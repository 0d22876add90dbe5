"""``adapterctl eval``: how far each copy of an adapter (a merge, a conversion, another dtype) is
from the adapter as trained, on the model's output: KL, top-1 agreement, perplexity; a CI gate."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from adapterctl.cli.options import (
    PANEL_ADAPTERS,
    ApiKey,
    DeviceMap,
    Revision,
    Token,
    TrustRemoteCode,
    dtype_option,
    examples,
    hub_options,
    placement,
    split_weight,
)
from adapterctl.cli.output import get_output
from adapterctl.errors import UsageError

PANEL_DATA = "Data"
PANEL_GATE = "Gate"
EvalDtype = Annotated[
    str,
    dtype_option("The reference's dtype (model variants run in it too)", "Base model placement", auto=False),
]


BaseOpt = Annotated[
    str | None,
    typer.Argument(
        metavar="BASE",
        show_default=False,
        help="Base model folder or Hub id (default: the adapter's base_model_name_or_path).",
    ),
]
AdapterOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        "-a",
        metavar="ADAPTER[=WEIGHT]",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="The adapter as trained (folder or Hub id), optionally =WEIGHT: the reference.",
    ),
]
VariantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--variant",
        metavar="NAME=SPEC",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="A copy to measure (repeatable): a merged model folder, another adapter folder on the "
        "same base, a dtype (bf16, fp16: the adapter run in it), a .gguf file (a merged model, or "
        "a LoRA on --gguf-base) run by llama.cpp, an MLX adapter folder run by mlx-lm (--mlx-python), or URL#SERVED-NAME (vLLM's prompt_logprobs).",
    ),
]
GgufBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--gguf-base",
        metavar="FILE",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="The base as GGUF (llama.cpp's convert_hf_to_gguf.py), under GGUF LoRA variants.",
    ),
]
LlamaCppOpt = Annotated[
    str | None,
    typer.Option(
        "--llama-cpp",
        metavar="DIR",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="llama.cpp's build (or folder of its binaries) for GGUF variants; default "
        "$ADAPTERCTL_LLAMA_CPP, then PATH.",
    ),
]
MlxPythonOpt = Annotated[
    str | None,
    typer.Option(
        "--mlx-python",
        metavar="PATH",
        show_default=False,
        rich_help_panel=PANEL_ADAPTERS,
        help="The python of a virtualenv with mlx-lm, which runs MLX adapter variants; default "
        "$ADAPTERCTL_MLX_PYTHON.",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        show_default=False,
        rich_help_panel=PANEL_DATA,
        help="Text to score, teacher-forced: JSONL (`text`, or `prompt` + `completion`: only the "
        "completion is scored) or plain text (cut into --ctx token windows).",
    ),
]
PromptsOpt = Annotated[
    str | None,
    typer.Option(
        "--prompts",
        show_default=False,
        rich_help_panel=PANEL_DATA,
        help="Prompts (text or JSONL) the reference continues greedily; every variant is scored on "
        "those continuations, with its first greedy divergence.",
    ),
]
CtxOpt = Annotated[
    int,
    typer.Option(
        "--ctx", min=2, rich_help_panel=PANEL_DATA, help="Tokens per window (and at most per sequence)."
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option("--batch-size", min=1, rich_help_panel=PANEL_DATA, help="Sequences per forward pass."),
]
MaxNewTokensOpt = Annotated[
    int,
    typer.Option("--max-new-tokens", min=1, rich_help_panel=PANEL_DATA, help="--prompts: tokens generated."),
]
MaxKlOpt = Annotated[
    float | None,
    typer.Option(
        "--max-kl",
        min=0.0,
        show_default=False,
        rich_help_panel=PANEL_GATE,
        help="Exit 10 when a variant's mean KL (nats) is above this.",
    ),
]
MinTop1Opt = Annotated[
    float | None,
    typer.Option(
        "--min-top1",
        min=0.0,
        max=1.0,
        show_default=False,
        rich_help_panel=PANEL_GATE,
        help="Exit 10 when a variant's top-1 agreement is below this (0 to 1).",
    ),
]


def eval_cmd(
    base: BaseOpt = None,
    adapter: AdapterOpt = None,
    variant: VariantOpt = None,
    gguf_base: GgufBaseOpt = None,
    llama_cpp: LlamaCppOpt = None,
    mlx_python: MlxPythonOpt = None,
    data: DataOpt = None,
    prompts: PromptsOpt = None,
    ctx: CtxOpt = 512,
    batch_size: BatchSizeOpt = 8,
    max_new_tokens: MaxNewTokensOpt = 32,
    max_kl: MaxKlOpt = None,
    min_top1: MinTop1Opt = None,
    dtype: EvalDtype = "float32",
    device_map: DeviceMap = None,
    trust_remote_code: TrustRemoteCode = False,
    revision: Revision = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """Measure how far each copy of an adapter is from the adapter as trained, on the model's
    output: KL(reference || variant) mean, p99 and max, top-1 agreement and perplexity, per
    variant, with the base as the scale. Exit 10 when a variant is past --max-kl or --min-top1."""
    from adapterctl.core.eval.report import Gate
    from adapterctl.core.eval.run import EvalOptions, run_eval
    from adapterctl.core.eval.specs import parse_variant
    from adapterctl.core.runtime.session import AdapterChoice
    from adapterctl.core.serve.eval_endpoint import endpoint_scorer
    from adapterctl.errors import NotServedError

    out = get_output()
    if adapter is None:
        raise UsageError(
            "give the adapter as trained: -a ADAPTER", hint="adapterctl eval BASE -a ADAPTER --data FILE"
        )
    if (data is None) == (prompts is None):
        raise UsageError(
            "give either --data FILE or --prompts FILE",
            hint="--data scores a text as it is; --prompts scores the reference's own continuations.",
        )
    ref, weight = split_weight(adapter)
    specs = [parse_variant(v) for v in variant or []]
    prompt_pairs = None
    if prompts is not None:
        from adapterctl.core.generate.prompts import collect_prompts

        prompt_pairs = [(p.id, p.prompt) for p in collect_prompts((), prompts)]
    options = EvalOptions(
        dtype=dtype or "float32",
        ctx=ctx,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        gate=Gate(max_kl, min_top1),
        llama_cpp=llama_cpp,
        gguf_base=gguf_base,
        mlx_python=mlx_python,
    )
    with out.progress("scoring", unit="tokens") as advance:
        done = [0]

        def progress(now: int, total: int) -> None:
            advance(now - done[0], total=total)
            done[0] = now

        report = run_eval(
            base,
            AdapterChoice(ref, 1.0 if weight is None else weight),
            specs,
            data=data,
            prompts=prompt_pairs,
            options=options,
            placement=placement(dtype or "float32", device_map, None, None, None, trust_remote_code),
            hub=hub_options(revision, token),
            on_step=out.info,
            on_progress=progress,
            endpoint_scorer=partial(endpoint_scorer, api_key=api_key),
        )
    doc = report.to_dict()
    if not report.failed:
        out.result(doc, lambda console: _render(console, report))
        return
    err = NotServedError(
        f"{len(report.failed)} variant(s) past the gate: "
        + "; ".join(f"{v.name} ({', '.join(v.failures)})" for v in report.failed),
        hint="The table shows every figure; `adapterctl convert --rank` higher, another dtype or a "
        "full-rank conversion loses less.",
    )
    out.fail(doc, lambda console: _render(console, report), err)


def eval_copy(
    base: str | None, adapters: list[tuple[str, float]], copy: str, data: str, dtype: str | None
) -> dict:
    """``convert --eval`` / ``merge --eval``: the copy just written against the original (the
    adapters at their weights on ``base``), teacher-forced on ``data``; the figures for --json."""
    from adapterctl.core.eval.run import EvalOptions, run_eval
    from adapterctl.core.eval.specs import classify
    from adapterctl.core.runtime.session import AdapterChoice

    out = get_output()
    with out.status(f"eval: {copy} against the original on {data}"):
        report = run_eval(
            base,
            [AdapterChoice(ref, w) for ref, w in adapters],
            [classify("output", copy)],
            data=data,
            options=EvalOptions(dtype=dtype or "float32"),
        )
    v, base_row = report.variants[1], report.variants[0]
    return {
        "data": data,
        "positions": report.positions,
        "kl_mean": v.kl_mean,
        "kl_p99": v.kl_p99,
        "kl_max": v.kl_max,
        "top1_agreement": v.top1_agreement,
        "perplexity": v.perplexity,
        "reference_perplexity": report.reference_perplexity,
        "base_kl_mean": base_row.kl_mean,
    }


def eval_line(e: dict) -> str:
    """The one line ``convert``/``merge --eval`` print."""
    return (
        f"eval on {e['data']} ({e['positions']} positions): KL mean {_fmt(e['kl_mean'])} nats "
        f"(the base: {_fmt(e['base_kl_mean'])}), top-1 agreement {e['top1_agreement']:.2%}, "
        f"perplexity {e['perplexity']:.4g} (original {e['reference_perplexity']:.4g})"
    )


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x else "0"


def _render(console, report) -> None:
    from rich.table import Table
    from rich.text import Text

    title = (
        f"{report.adapter} on {report.base} ({report.dtype}): {report.positions} positions "
        f"in {report.sequences} sequences, reference perplexity {report.reference_perplexity:.4g}"
    )
    table = Table(title=title, title_justify="left")
    cols = ["variant", "kind", "KL mean", "KL p99", "KL max", "top-1", "perplexity"]
    divergence = report.mode == "prompts"
    if divergence:
        cols.append("first divergence")
    cols.append("verdict")
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("variant", "kind", "verdict", "first divergence") else "right"
        )
    for v in report.variants:
        verdict = (
            Text("scale", style="dim")
            if v.passed is None
            else (Text("ok", style="green") if v.passed else Text("; ".join(v.failures), style="red"))
        )
        row = [
            Text(v.name),
            Text(v.kind),
            _fmt(v.kl_mean),
            _fmt(v.kl_p99),
            _fmt(v.kl_max),
            f"{v.top1_agreement:.2%}",
            f"{v.perplexity:.4g}",
        ]
        if divergence:
            at = [d["token"] for d in v.first_divergence if d["token"] is not None]
            row.append(
                f"{len(at)}/{len(v.first_divergence)} prompts, earliest token {min(at)}" if at else "none"
            )
        table.add_row(*row, verdict)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(
        "eval",
        epilog=examples(
            "adapterctl eval ./base -a ./my-lora --data held-out.txt --variant merged=./merged",
            "adapterctl eval ./base -a ./my-lora --data eval.jsonl --variant r4=./lora-r4 --variant bf16=bf16",
            "adapterctl --json eval ./base -a ./my-lora --prompts prompts.txt --variant m=./merged --max-kl 0.01",
        ),
    )(eval_cmd)
