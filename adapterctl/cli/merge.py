"""``adapterctl merge``: base + adapter deltas -> a full transformers checkpoint, streamed tensor
by tensor; or, with ``--to-adapter``, several adapters -> one new adapter."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from adapterctl.cli.options import PANEL_OUTPUT as PANEL_OUT
from adapterctl.cli.options import (
    Revision,
    Token,
    adapter_weights,
    dtype_option,
    examples,
    hub_options,
)
from adapterctl.cli.output import get_output, human_bytes
from adapterctl.errors import UsageError

PANEL_COMBINE = "Several adapters"
OutputDtype = Annotated[str | None, dtype_option("Output dtype (auto: the base's)", PANEL_OUT)]


def _parse_weights(text: str | None) -> list[float] | None:
    """The deprecated ``--weights 0.7,0.3``."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError as err:
        raise UsageError(
            f"--weights {text!r}: expected numbers separated by commas",
            hint="Write ADAPTER=WEIGHT instead, e.g. ./lora-a=0.7 ./lora-b=0.3.",
        ) from err


def _parse_size(text: str) -> int:
    from adapterctl.io.checkpoint.shard_writer import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise UsageError(f"--max-shard-size: {err}") from err


InputsOpt = Annotated[
    list[str],
    typer.Argument(
        metavar="BASE ADAPTER[=WEIGHT] [ADAPTER[=WEIGHT]...]",
        help="The base model folder (or Hub "
        "id), then one or more adapters, each optionally with =WEIGHT (default 1). With "
        "--to-adapter, the base may be left out.",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Output folder (required unless --dry-run).", rich_help_panel=PANEL_OUT
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where deltas are computed: auto (CUDA when available), cpu, cuda.",
        rich_help_panel=PANEL_OUT,
    ),
]
MaxShardSizeOpt = Annotated[
    str,
    typer.Option(
        "--max-shard-size", help="Largest output shard (e.g. 5GB, 500MB).", rich_help_panel=PANEL_OUT
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="Tensors merged at once, one core each (default: the cores this process may use, at most 8; 2 on a GPU).",
        rich_help_panel=PANEL_OUT,
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing non-empty output.", rich_help_panel=PANEL_OUT)
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (tensors touched, output size, shards) and write nothing.",
        rich_help_panel=PANEL_OUT,
    ),
]
CombinationOpt = Annotated[
    str | None,
    typer.Option(
        "--combination",
        help="linear (exact weighted sum, the default), ties, dare_linear, "
        "dare_ties, magnitude_prune; with --to-adapter also cat (exact, default) and svd.",
        rich_help_panel=PANEL_COMBINE,
    ),
]
DensityOpt = Annotated[
    float | None,
    typer.Option(
        "--density",
        help="Fraction of delta entries kept by ties/dare/magnitude_prune.",
        rich_help_panel=PANEL_COMBINE,
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of DARE's random masks.", rich_help_panel=PANEL_COMBINE)
]
ToAdapterOpt = Annotated[
    bool,
    typer.Option(
        "--to-adapter",
        help="Write one new LoRA adapter that combines the adapters, instead of a merged model.",
        rich_help_panel=PANEL_COMBINE,
    ),
]
RankOpt = Annotated[
    int | None,
    typer.Option(
        "--rank",
        min=1,
        help="--to-adapter with svd/ties/dare: rank of the new adapter (default: the largest source rank).",
        rich_help_panel=PANEL_COMBINE,
    ),
]
TiedLikePeftOpt = Annotated[
    bool,
    typer.Option(
        "--tied-like-peft",
        help="On a model whose lm_head shares the embedding table, put every "
        "delta into the one table as PEFT's merge_and_unload does (default: the merged model "
        "equals the attached adapter, untying the table where its two ends differ).",
        rich_help_panel=PANEL_OUT,
    ),
]
QloraOpt = Annotated[
    str | None,
    typer.Option(
        "--qlora",
        metavar="nf4|fp4",
        help="The adapter was trained on a 4-bit base (QLoRA): merge "
        "into the base's bitsandbytes 4-bit round trip (blocks of 64, every weight "
        "load_in_4bit quantizes), the weights it saw.",
        rich_help_panel=PANEL_OUT,
    ),
]
QloraDoubleQuantOpt = Annotated[
    bool,
    typer.Option(
        "--qlora-double-quant",
        help="With --qlora: the 4-bit block scales were quantized too (bnb_4bit_use_double_quant=True).",
        rich_help_panel=PANEL_OUT,
    ),
]


EvalDataOpt = Annotated[
    str | None,
    typer.Option(
        "--eval",
        metavar="DATA",
        show_default=False,
        rich_help_panel=PANEL_OUT,
        help="After writing, measure the merged model against the adapters attached to BASE "
        "on DATA (as `adapterctl eval --data`): one line, and `eval` in --json. Linear merges.",
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="safetensors|gguf",
        help="Output format: a transformers folder (safetensors, the default) or one GGUF file "
        "for llama.cpp and Ollama (gguf).",
        rich_help_panel=PANEL_OUT,
    ),
]
OuttypeOpt = Annotated[
    str,
    typer.Option(
        "--outtype",
        help="With --to gguf: f32, f16, bf16, q8_0 (written directly) or a llama.cpp type such as "
        "Q4_K_M, Q5_K_M, Q6_K (through llama.cpp's llama-quantize).",
        rich_help_panel=PANEL_OUT,
    ),
]
LlamaCppOpt = Annotated[
    Path | None,
    typer.Option(
        "--llama-cpp",
        metavar="DIR",
        help="A llama.cpp build whose llama-quantize writes --outtype types other than "
        "f32/f16/bf16/q8_0 (default: $ADAPTERCTL_LLAMA_CPP, then PATH).",
        rich_help_panel=PANEL_OUT,
    ),
]


def merge_cmd(
    inputs: InputsOpt,
    output: OutputOpt = None,
    dtype: OutputDtype = "auto",
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardSizeOpt = "5GB",
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    weights: Annotated[str | None, typer.Option("--weights", hidden=True)] = None,
    combination: CombinationOpt = None,
    density: DensityOpt = None,
    seed: SeedOpt = 0,
    to_adapter: ToAdapterOpt = False,
    rank: RankOpt = None,
    tied_like_peft: TiedLikePeftOpt = False,
    qlora: QloraOpt = None,
    qlora_double_quant: QloraDoubleQuantOpt = False,
    eval_data: EvalDataOpt = None,
    to: ToOpt = None,
    outtype: OuttypeOpt = "f16",
    llama_cpp: LlamaCppOpt = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Merge LoRA adapters into a base model and write a full checkpoint (streamed, never builds
    the model), or combine adapters into a new adapter with --to-adapter."""
    legacy = _parse_weights(weights)
    hub = hub_options(revision, token)  # --revision: the adapters'; a base takes user/repo@rev
    if to_adapter and (qlora or qlora_double_quant):
        raise UsageError(
            "--qlora merges into a base model; --to-adapter writes no base",
            hint="Drop --qlora, or drop --to-adapter and give a BASE.",
        )
    if to_adapter:
        texts = [r for r in inputs if not _is_model_dir(r)]  # a leading BASE is allowed, and unused
        unused = [r for r in inputs if _is_model_dir(r)]  # still never replaced by the output
        refs, w = adapter_weights(texts, legacy)
        return _combine_to_adapter(
            refs,
            w,
            output,
            method=combination or "cat",
            density=density,
            seed=seed,
            rank=rank,
            force=force,
            dry_run=dry_run,
            hub=hub,
            unused=unused,
        )
    if len(inputs) < 2:
        raise UsageError(
            "merge needs a BASE and at least one ADAPTER",
            hint="adapterctl merge ./base ./my-lora --output ./merged",
        )
    if output is None and not dry_run:
        raise UsageError("--output is required (or pass --dry-run)")
    if eval_data is not None and (dry_run or (combination or "linear") != "linear"):
        raise UsageError(
            "--eval measures a linear merge that was written",
            hint="Drop --eval with --dry-run or --combination; run `adapterctl eval` on the result.",
        )
    refs, w = adapter_weights(inputs[1:], legacy)
    gguf = _gguf_options(to, output, dtype, outtype, llama_cpp)
    if threads is not None and gguf:
        raise UsageError(
            "--threads applies to a safetensors merge; --to gguf writes one tensor at a time",
            hint="Drop --threads.",
        )
    _merge_model(
        inputs[0],
        refs,
        output,
        weights=w,
        dtype=dtype,
        device=device,
        max_shard_size=max_shard_size,
        threads=threads,
        force=force,
        dry_run=dry_run,
        combination=combination or "linear",
        density=density,
        seed=seed,
        hub=hub,
        tied_like_peft=tied_like_peft,
        qlora=(qlora, qlora_double_quant),
        eval_data=eval_data,
        gguf=gguf,
    )


def _gguf_options(to, output, dtype, outtype, llama_cpp) -> tuple[str, Path | None] | None:
    """(outtype, llama.cpp folder) for --to gguf, None for a safetensors folder."""
    if to not in (None, "safetensors", "gguf"):
        raise UsageError(f"--to {to!r}: use safetensors or gguf")
    if to != "gguf":
        if output is not None and output.suffix.lower() == ".gguf":
            raise UsageError(
                f"--output {output} names a GGUF file but the output format is a safetensors folder",
                hint="Add --to gguf to write a GGUF model.",
            )
        return None
    from adapterctl.core.merge.gguf import check_gguf_options

    check_gguf_options(dtype, output)
    return outtype, llama_cpp


def _merge_model(
    base,
    refs,
    output,
    *,
    weights,
    dtype,
    device,
    max_shard_size,
    threads=None,
    force,
    dry_run,
    combination,
    density,
    seed,
    hub,
    tied_like_peft=False,
    qlora=(None, False),
    eval_data=None,
    gguf=None,
) -> None:
    from adapterctl.io.safetensors.file_pages import prefetch_folder

    if not dry_run:  # the disk reads the base while torch imports (torch-free module)
        prefetch_folder(base)
    from adapterctl.core.merge.plan import MergeOptions
    from adapterctl.core.merge.run import MergeReport, check_merge_output, plan_from_refs
    from adapterctl.core.merge.write import execute_merge

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu or cuda")
    out = get_output()
    options = MergeOptions(
        weights=tuple(weights),
        combination=combination,
        density=density,
        seed=seed,
        # a GGUF is rounded once, from float32 merges, to its own types
        dtype="float32" if gguf else None if dtype in (None, "auto") else dtype,
        max_shard_size=_parse_size(max_shard_size),
        tied_like_peft=tied_like_peft,
        qlora=qlora[0],
        qlora_double_quant=qlora[1],
    )
    with out.status("planning the merge"):
        job = plan_from_refs(base, refs, options, hub)
    plan = job.plan
    for a in plan.adapters:
        if a.get("key_mapping"):
            m = a["key_mapping"]
            out.info(f"{a['source']}: module paths mapped {m['from']} -> {m['to']} ({'; '.join(m['rules'])})")
    card_notes = set()
    if gguf:  # a GGUF has no model card: its notes do not apply
        from adapterctl.io.folders.model_card import card_base

        card_notes = set(card_base(plan.base)[1])
    for warning in plan.warnings:
        if warning not in card_notes:
            out.warn(warning)
    replaced = check_merge_output(job, output)  # an input as output is refused, dry run or not
    if gguf:
        return _merge_gguf(job, output, gguf, force, dry_run, device, replaced)
    if dry_run:
        report = MergeReport(plan, replaces=replaced)
        return out.result(report.to_dict(), lambda c: _render_plan(c, plan, replaced))
    label = f"merging {plan.num_tensors} tensors"
    with out.progress(label, total=plan.output_bytes) as advance:
        done = [0]

        def on_progress(nbytes: int, key: str) -> None:
            done[0] += 1
            advance(
                nbytes,
                description=f"{label} ({done[0]}/{plan.num_tensors}, {human_bytes(plan.output_bytes)})",
            )

        result = execute_merge(
            job,
            output,
            force=force,
            device=device,
            on_progress=on_progress,
            command=_command_line(),
            threads=threads,
        )
    report = MergeReport(plan, result, replaced)
    if eval_data is None:
        return out.result(report.to_dict(), lambda c: _render_result(c, result, plan))
    from adapterctl.cli.eval import eval_copy, eval_line

    figures = eval_copy(base, list(zip(refs, weights)), str(output), eval_data, None)

    def both(console) -> None:
        _render_result(console, result, plan)
        console.print(eval_line(figures), markup=False)

    out.result({**report.to_dict(), "eval": figures}, both)


def _merge_gguf(job, output, gguf, force, dry_run, device, replaced) -> None:
    from adapterctl.core.merge.gguf import plan_gguf, write_gguf

    out = get_output()
    target = plan_gguf(job, gguf[0], gguf[1])
    if dry_run:
        return out.result(
            {
                "dry_run": True,
                "to": "gguf",
                "outtype": target.outtype,
                "bytes": target.nbytes,
                "tensors": len(target.tensors),
                "replaces": replaced,
                "plan": job.plan.to_dict(),
            },
            lambda c: c.print(
                f"would write {output}: llama.cpp {target.facts.rule.gguf_arch}, {target.outtype}, "
                f"{len(target.tensors)} tensors ({len(job.plan.touched)} merged), "
                f"{human_bytes(target.nbytes)}" + (" before llama-quantize" if target.quantize else ""),
                markup=False,
            ),
        )
    label = f"merging {len(target.tensors)} tensors into {Path(output).name}"
    total = sum(4 * max(1, _numel(t.shape)) for t in target.tensors if t.key)
    with out.progress(label, total=total) as advance:
        result = write_gguf(
            job,
            target,
            output,
            force=force,
            device=device,
            on_progress=lambda nbytes, key: advance(nbytes),
        )
    out.result(
        {"to": "gguf", **result.to_dict(), "replaces": replaced, "plan": job.plan.to_dict()},
        lambda c: _render_gguf(c, result),
    )


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _render_gguf(console, result) -> None:
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.types.items()))
    console.print(
        f"wrote {result.output}: llama.cpp {result.arch}, {result.outtype}, {result.tensors_written} "
        f"tensors ({result.tensors_merged} merged{'; ' + types if types else ''}), "
        f"{human_bytes(result.bytes_written)}, tokenizer gpt2/{result.tokenizer_pre} "
        f"({result.vocab_size} tokens), {result.seconds:.1f}s on {result.device}",
        markup=False,
    )
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    console.print(
        "Ollama Modelfile (save it beside the GGUF, then: ollama create NAME -f Modelfile):", markup=False
    )
    console.print(result.ollama_modelfile.rstrip("\n"), markup=False)


def _combine_to_adapter(
    refs, weights, output, *, method, density, seed, rank, force, dry_run, hub, unused=()
) -> None:
    from adapterctl.core.merge.to_adapter import combine_to_adapter
    from adapterctl.io.folders.output_dir import Input

    out = get_output()
    result = combine_to_adapter(
        refs,
        output,
        weights=weights,
        method=method,
        rank=rank,
        density=density,
        seed=seed,
        force=force,
        dry_run=dry_run,
        hub=hub,
        keep=[Input.model(b, role="base model (unused by --to-adapter)") for b in unused],
    )
    for warning in result.warnings:
        out.warn(warning)

    def render(c) -> None:
        c.print(
            f"{'would write' if dry_run else 'wrote'} adapter {output} ({result.method} of "
            f"{len(refs)} adapters, {result.modules} modules, r={result.r})",
            markup=False,
        )
        if dry_run:
            render_replaces(c, result.replaces)

    out.result(result.to_dict(), render)


def _is_model_dir(ref: str) -> bool:
    from adapterctl.io.formats.classify import MODEL, classify_folder

    return classify_folder(ref) == MODEL


def _command_line() -> str:
    """The command as typed, for the model card; a --token value is never written there."""
    args, hide = [], False
    for arg in sys.argv[1:]:
        args.append("***" if hide else "--token=***" if arg.startswith("--token=") else arg)
        hide = arg == "--token"
    return "adapterctl " + " ".join(shlex.quote(a) for a in args)


def _render_plan(console, plan, replaced=()) -> None:
    console.print(
        f"base {plan.base} ({plan.model_type}, {plan.base_format}, {plan.base_dtype}) -> {plan.dtype}",
        markup=False,
    )
    render_replaces(console, replaced)
    for a in plan.adapters:
        console.print(
            f"  adapter {a['source']} (weight {a['weight']:g}, {a['modules']} modules)", markup=False
        )
    console.print(
        f"{len(plan.touched)} of {plan.num_tensors} tensors touched, "
        f"{human_bytes(plan.output_bytes)} in {len(plan.shards)} shard(s)"
        + (", lm_head untied from the embedding" if plan.untie_embeddings else "")
    )
    _render_qlora(console, plan.qlora)
    for t in plan.touched[:20]:
        console.print(f"  {t['key']} {t['shape']}: {', '.join(t['ops'])}", markup=False)
    if len(plan.touched) > 20:
        console.print(f"  ... and {len(plan.touched) - 20} more")


def render_replaces(console, replaced) -> None:
    """The dry run's "what would be replaced" lines (``[{"path", "exists"}]``)."""
    for r in replaced:
        what = "exists: replaced (with --force)" if r["exists"] else "new"
        console.print(f"output {r['path']} ({what})", markup=False)


def _render_result(console, result, plan) -> None:
    console.print(
        f"wrote {result.output}: {result.tensors_written} tensors ({result.tensors_merged} "
        f"merged), {human_bytes(result.bytes_written)} in {len(result.shards)} shard(s), "
        f"{result.dtype}, {result.seconds:.1f}s on {result.device}"
        + (
            f" ({result.threads} thread{'s' if result.threads != 1 else ''})"
            if result.device == "cpu"
            else ""
        ),
        markup=False,
    )
    _render_qlora(console, plan.qlora)


def _render_qlora(console, q: dict) -> None:
    if q.get("rule") == "flag":
        console.print(
            f"qlora: {q['tensors']} weights merged into their {q['quant_type']} round "
            f"trip (blocks of {q['blocksize']}"
            + (", double-quantized scales)" if q["double_quant"] else ")"),
            markup=False,
        )
    elif q.get("rule") == "base-is-4bit":
        console.print(
            f"qlora: the base is stored in 4 bits ({q['quant_type']}): its {q['tensors']} "
            "weights were merged dequantized, as the adapter saw them",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command(
        "merge",
        epilog=examples(
            "adapterctl merge ./Llama-3.2-1B ./my-lora --output ./merged",
            "adapterctl merge ./base ./lora-a=0.7 ./lora-b=0.3 --dtype bfloat16 -o ./out",
            "adapterctl merge --to-adapter ./lora-a ./lora-b --combination svd --rank 16 -o ./ab",
        ),
    )(merge_cmd)
