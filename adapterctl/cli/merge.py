"""``adapterctl merge``: base + adapter deltas -> a full transformers checkpoint, streamed tensor
by tensor; or, with ``--to-adapter``, several adapters -> one new adapter."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from adapterctl.cli.common import TokenOpt, examples, hub_options
from adapterctl.cli.output import get_output, human_bytes
from adapterctl.errors import UsageError

PANEL_COMBINE = "Several adapters"
PANEL_OUT = "Output"


def _parse_weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as err:
        raise UsageError(f"--weights {text!r}: expected numbers separated by commas",
                         hint="For example --weights 0.7,0.3.") from err


def _parse_size(text: str) -> int:
    from adapterctl.io.shard_writer import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise UsageError(f"--max-shard-size: {err}") from err


def merge_cmd(
    inputs: list[str] = typer.Argument(..., metavar="BASE ADAPTER [ADAPTER...]", help="The base "
                                       "model folder (or Hub id), then one or more adapters. With "
                                       "--to-adapter, the base may be left out."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (required unless "
                                "--dry-run).", rich_help_panel=PANEL_OUT),
    dtype: str = typer.Option("auto", "--dtype", help="Output dtype: auto (the base's), float32, "
                              "bfloat16, float16.", rich_help_panel=PANEL_OUT),
    device: str = typer.Option("auto", "--device", help="Where deltas are computed: auto (CUDA when "
                               "available), cpu, cuda.", rich_help_panel=PANEL_OUT),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard "
                                       "(e.g. 5GB, 500MB).", rich_help_panel=PANEL_OUT),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty output.",
                               rich_help_panel=PANEL_OUT),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (tensors touched, output "
                                 "size, shards) and write nothing.", rich_help_panel=PANEL_OUT),
    weights: str = typer.Option(None, "--weights", help="One weight per adapter, e.g. 0.7,0.3 "
                                "(default 1 each).", rich_help_panel=PANEL_COMBINE),
    combination: str = typer.Option(None, "--combination", help="linear (exact weighted sum, the "
                                    "default), ties, dare_linear, dare_ties, magnitude_prune; with "
                                    "--to-adapter also cat (exact, default) and svd.",
                                    rich_help_panel=PANEL_COMBINE),
    density: float = typer.Option(None, "--density", help="Fraction of delta entries kept by ties/"
                                  "dare/magnitude_prune.", rich_help_panel=PANEL_COMBINE),
    seed: int = typer.Option(0, "--seed", help="Seed of DARE's random masks.",
                             rich_help_panel=PANEL_COMBINE),
    to_adapter: bool = typer.Option(False, "--to-adapter", help="Write one new LoRA adapter that "
                                    "combines the adapters, instead of a merged model.",
                                    rich_help_panel=PANEL_COMBINE),
    rank: int = typer.Option(None, "--rank", min=1, help="--to-adapter with svd/ties/dare: rank of the new "
                             "adapter (default: the largest source rank).",
                             rich_help_panel=PANEL_COMBINE),
    tied_like_peft: bool = typer.Option(False, "--tied-like-peft", help="On a model whose lm_head "
                                        "shares the embedding table, put every delta into the one "
                                        "table as PEFT's merge_and_unload does (default: the merged "
                                        "model equals the attached adapter, untying the table where "
                                        "its two ends differ).", rich_help_panel=PANEL_OUT),
    token: str = TokenOpt,
) -> None:
    """Merge LoRA adapters into a base model and write a full checkpoint (streamed, never builds
    the model), or combine adapters into a new adapter with --to-adapter."""
    if to_adapter:
        return _combine_to_adapter(inputs, output, combination or "cat", weights, density, seed,
                                   rank, force, dry_run, token)
    if len(inputs) < 2:
        raise UsageError("merge needs a BASE and at least one ADAPTER",
                         hint="adapterctl merge ./base ./my-lora --output ./merged")
    if output is None and not dry_run:
        raise UsageError("--output is required (or pass --dry-run)")
    _merge_model(inputs, output, dtype, device, max_shard_size, force, dry_run, weights,
                 combination or "linear", density, seed, token, tied_like_peft)


def _merge_model(inputs, output, dtype, device, max_shard_size, force, dry_run, weights,
                 combination, density, seed, token, tied_like_peft=False) -> None:
    from adapterctl.core.merge.plan import DTYPES, MergeOptions, load_adapters, plan_merge
    from adapterctl.core.merge.write import execute_merge
    from adapterctl.io.resolve import resolve_adapter_dir, resolve_model_dir

    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu or cuda")
    out = get_output()
    hub = hub_options(None, token)
    base_dir = resolve_model_dir(inputs[0], hub)
    adapter_dirs = [resolve_adapter_dir(a, hub) for a in inputs[1:]]
    options = MergeOptions(weights=_parse_weights(weights), combination=combination,
                           density=density, seed=seed, dtype=None if dtype == "auto" else dtype,
                           max_shard_size=_parse_size(max_shard_size),
                           tied_like_peft=tied_like_peft)
    with out.status("planning the merge"):
        job = plan_merge(base_dir, load_adapters(adapter_dirs, inputs[1:]), options, inputs[0])
    plan = job.plan
    for warning in plan.warnings:
        out.warn(warning)
    if dry_run:
        out.result({"dry_run": True, "plan": plan.to_dict()}, lambda c: _render_plan(c, plan))
        return
    label = f"merging {plan.num_tensors} tensors"
    with out.progress(label, total=plan.output_bytes) as advance:
        done = [0]

        def on_progress(nbytes: int, key: str) -> None:
            done[0] += 1
            advance(nbytes, description=f"{label} ({done[0]}/{plan.num_tensors}, "
                    f"{human_bytes(plan.output_bytes)})")

        result = execute_merge(job, output, force=force, device=device, on_progress=on_progress,
                               command=_command_line())
    out.result({"dry_run": False, **result.to_dict(), "plan": plan.to_dict()},
               lambda c: _render_result(c, result, plan))


def _combine_to_adapter(inputs, output, method, weights, density, seed, rank, force, dry_run,
                        token) -> None:
    from adapterctl.core.lora.combine import combine_adapters, write_combined_adapter
    from adapterctl.core.merge.plan import load_adapters
    from adapterctl.io.output_dir import write_output_dir
    from adapterctl.io.resolve import resolve_adapter_dir

    out = get_output()
    hub = hub_options(None, token)
    refs = [r for r in inputs if not _is_model_dir(r)]  # a leading BASE is allowed, and unused
    if len(refs) < 1 or (output is None and not dry_run):
        raise UsageError("--to-adapter needs at least one ADAPTER and --output",
                         hint="adapterctl merge --to-adapter ./lora-a ./lora-b --output ./combined")
    method = "cat" if method == "linear" else method
    adapters = load_adapters([resolve_adapter_dir(r, hub) for r in refs], refs)
    w = list(_parse_weights(weights) or [1.0] * len(adapters))
    if len(w) != len(adapters):
        raise UsageError(f"--weights has {len(w)} values for {len(adapters)} adapters")
    combined = combine_adapters(adapters, w, method, rank, density, seed)
    data = {"dry_run": dry_run, "output": str(output) if output else None, "method": method,
            "adapters": refs, "weights": w, "modules": len(combined.ranks),
            "r": combined.config["r"], "rank_pattern": combined.config["rank_pattern"]}
    if not dry_run:
        with write_output_dir(output, force) as tmp:
            write_combined_adapter(combined, tmp)
    out.result(data, lambda c: c.print(
        f"{'would write' if dry_run else 'wrote'} adapter {output} ({method} of {len(refs)} "
        f"adapters, {len(combined.ranks)} modules, r={combined.config['r']})"))


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
    console.print(f"base {plan.base} ({plan.model_type}, {plan.base_format}, {plan.base_dtype}) -> "
                  f"{plan.dtype}", markup=False)
    for a in plan.adapters:
        console.print(f"  adapter {a['source']} (weight {a['weight']:g}, {a['modules']} modules)",
                      markup=False)
    console.print(f"{len(plan.touched)} of {plan.num_tensors} tensors touched, "
                  f"{human_bytes(plan.output_bytes)} in {len(plan.shards)} shard(s)"
                  + (", lm_head untied from the embedding" if plan.untie_embeddings else ""))
    for t in plan.touched[:20]:
        console.print(f"  {t['key']} {t['shape']}: {', '.join(t['ops'])}", markup=False)
    if len(plan.touched) > 20:
        console.print(f"  ... and {len(plan.touched) - 20} more")


def _render_result(console, result, plan) -> None:
    console.print(f"wrote {result.output}: {result.tensors_written} tensors ({result.tensors_merged} "
                  f"merged), {human_bytes(result.bytes_written)} in {len(result.shards)} shard(s), "
                  f"{result.dtype}, {result.seconds:.1f}s on {result.device}", markup=False)


def register(app: typer.Typer) -> None:
    app.command(
        "merge",
        epilog=examples(
            "adapterctl merge ./Llama-3.2-1B ./my-lora --output ./merged",
            "adapterctl merge ./base ./lora-a ./lora-b --weights 0.7,0.3 --dtype bfloat16 -o ./out",
            "adapterctl merge --to-adapter ./lora-a ./lora-b --combination svd --rank 16 -o ./ab",
        ),
    )(merge_cmd)
