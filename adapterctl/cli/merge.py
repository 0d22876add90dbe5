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
    Token,
    adapter_weights,
    deprecated_weights_help,
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


def merge_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="BASE ADAPTER[=WEIGHT] [ADAPTER[=WEIGHT]...]",
            help="The base model folder (or Hub "
            "id), then one or more adapters, each optionally with =WEIGHT (default 1). With "
            "--to-adapter, the base may be left out.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Output folder (required unless --dry-run).", rich_help_panel=PANEL_OUT
        ),
    ] = None,
    dtype: OutputDtype = "auto",
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Where deltas are computed: auto (CUDA when available), cpu, cuda.",
            rich_help_panel=PANEL_OUT,
        ),
    ] = "auto",
    max_shard_size: Annotated[
        str,
        typer.Option(
            "--max-shard-size", help="Largest output shard (e.g. 5GB, 500MB).", rich_help_panel=PANEL_OUT
        ),
    ] = "5GB",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing non-empty output.", rich_help_panel=PANEL_OUT)
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (tensors touched, output size, shards) and write nothing.",
            rich_help_panel=PANEL_OUT,
        ),
    ] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help=deprecated_weights_help("comma-separated, e.g. 0.7,0.3"),
            rich_help_panel=PANEL_COMBINE,
        ),
    ] = None,
    combination: Annotated[
        str | None,
        typer.Option(
            "--combination",
            help="linear (exact weighted sum, the default), ties, dare_linear, "
            "dare_ties, magnitude_prune; with --to-adapter also cat (exact, default) and svd.",
            rich_help_panel=PANEL_COMBINE,
        ),
    ] = None,
    density: Annotated[
        float | None,
        typer.Option(
            "--density",
            help="Fraction of delta entries kept by ties/dare/magnitude_prune.",
            rich_help_panel=PANEL_COMBINE,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of DARE's random masks.", rich_help_panel=PANEL_COMBINE)
    ] = 0,
    to_adapter: Annotated[
        bool,
        typer.Option(
            "--to-adapter",
            help="Write one new LoRA adapter that combines the adapters, instead of a merged model.",
            rich_help_panel=PANEL_COMBINE,
        ),
    ] = False,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank",
            min=1,
            help="--to-adapter with svd/ties/dare: rank of the new adapter (default: "
            "the largest source rank).",
            rich_help_panel=PANEL_COMBINE,
        ),
    ] = None,
    tied_like_peft: Annotated[
        bool,
        typer.Option(
            "--tied-like-peft",
            help="On a model whose lm_head shares the embedding table, put every "
            "delta into the one table as PEFT's merge_and_unload does (default: the merged model "
            "equals the attached adapter, untying the table where its two ends differ).",
            rich_help_panel=PANEL_OUT,
        ),
    ] = False,
    qlora: Annotated[
        str | None,
        typer.Option(
            "--qlora",
            metavar="nf4|fp4",
            help="The adapter was trained on a 4-bit base (QLoRA): merge "
            "into the base's bitsandbytes 4-bit round trip (blocks of 64, every weight "
            "load_in_4bit quantizes), the weights it saw.",
            rich_help_panel=PANEL_OUT,
        ),
    ] = None,
    qlora_double_quant: Annotated[
        bool,
        typer.Option(
            "--qlora-double-quant",
            help="With --qlora: the 4-bit block scales were quantized too (bnb_4bit_use_double_quant=True).",
            rich_help_panel=PANEL_OUT,
        ),
    ] = False,
    token: Token = None,
) -> None:
    """Merge LoRA adapters into a base model and write a full checkpoint (streamed, never builds
    the model), or combine adapters into a new adapter with --to-adapter."""
    legacy = _parse_weights(weights)
    if to_adapter and (qlora or qlora_double_quant):
        raise UsageError(
            "--qlora merges into a base model; --to-adapter writes no base",
            hint="Drop --qlora, or drop --to-adapter and give a BASE.",
        )
    if to_adapter:
        texts = [r for r in inputs if not _is_model_dir(r)]  # a leading BASE is allowed, and unused
        refs, w = adapter_weights(texts, legacy)
        return _combine_to_adapter(
            refs, w, output, combination or "cat", density, seed, rank, force, dry_run, token
        )
    if len(inputs) < 2:
        raise UsageError(
            "merge needs a BASE and at least one ADAPTER",
            hint="adapterctl merge ./base ./my-lora --output ./merged",
        )
    if output is None and not dry_run:
        raise UsageError("--output is required (or pass --dry-run)")
    refs, w = adapter_weights(inputs[1:], legacy)
    _merge_model(
        inputs[0],
        refs,
        w,
        output,
        dtype,
        device,
        max_shard_size,
        force,
        dry_run,
        combination or "linear",
        density,
        seed,
        token,
        tied_like_peft,
        (qlora, qlora_double_quant),
    )


def _merge_model(
    base,
    refs,
    weights,
    output,
    dtype,
    device,
    max_shard_size,
    force,
    dry_run,
    combination,
    density,
    seed,
    token,
    tied_like_peft=False,
    qlora=(None, False),
) -> None:
    from adapterctl.io.safetensors.file_pages import prefetch_folder

    if not dry_run:  # the disk reads the base while torch imports (torch-free module)
        prefetch_folder(base)
    from adapterctl.core.merge.plan import MergeOptions
    from adapterctl.core.merge.run import MergeReport, plan_from_refs
    from adapterctl.core.merge.write import execute_merge

    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu or cuda")
    out = get_output()
    options = MergeOptions(
        weights=tuple(weights),
        combination=combination,
        density=density,
        seed=seed,
        dtype=None if dtype in (None, "auto") else dtype,
        max_shard_size=_parse_size(max_shard_size),
        tied_like_peft=tied_like_peft,
        qlora=qlora[0],
        qlora_double_quant=qlora[1],
    )
    with out.status("planning the merge"):
        job = plan_from_refs(base, refs, options, hub_options(None, token))
    plan = job.plan
    for a in plan.adapters:
        if a.get("key_mapping"):
            m = a["key_mapping"]
            out.info(f"{a['source']}: module paths mapped {m['from']} -> {m['to']} ({'; '.join(m['rules'])})")
    for warning in plan.warnings:
        out.warn(warning)
    if dry_run:
        report = MergeReport(plan)
        return out.result(report.to_dict(), lambda c: _render_plan(c, plan))
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
            job, output, force=force, device=device, on_progress=on_progress, command=_command_line()
        )
    report = MergeReport(plan, result)
    out.result(report.to_dict(), lambda c: _render_result(c, result, plan))


def _combine_to_adapter(refs, weights, output, method, density, seed, rank, force, dry_run, token) -> None:
    from adapterctl.core.merge.to_adapter import combine_to_adapter

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
        hub=hub_options(None, token),
    )
    for warning in result.warnings:
        out.warn(warning)
    out.result(
        result.to_dict(),
        lambda c: c.print(
            f"{'would write' if dry_run else 'wrote'} adapter {output} ({result.method} of "
            f"{len(refs)} adapters, {result.modules} modules, r={result.r})",
            markup=False,
        ),
    )


def _is_model_dir(ref: str) -> bool:
    p = Path(ref).expanduser()
    return (p / "config.json").is_file() and not (p / "adapter_config.json").is_file()


def _command_line() -> str:
    """The command as typed, for the model card; a --token value is never written there."""
    args, hide = [], False
    for arg in sys.argv[1:]:
        args.append("***" if hide else "--token=***" if arg.startswith("--token=") else arg)
        hide = arg == "--token"
    return "adapterctl " + " ".join(shlex.quote(a) for a in args)


def _render_plan(console, plan) -> None:
    console.print(
        f"base {plan.base} ({plan.model_type}, {plan.base_format}, {plan.base_dtype}) -> {plan.dtype}",
        markup=False,
    )
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


def _render_result(console, result, plan) -> None:
    console.print(
        f"wrote {result.output}: {result.tensors_written} tensors ({result.tensors_merged} "
        f"merged), {human_bytes(result.bytes_written)} in {len(result.shards)} shard(s), "
        f"{result.dtype}, {result.seconds:.1f}s on {result.device}",
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
