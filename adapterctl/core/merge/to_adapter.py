"""``merge --to-adapter``: several adapters -> one new LoRA adapter folder (spec section 8).

The maths is :func:`adapterctl.core.lora.combine.combine_adapters`; this module resolves the
adapters, checks the request, and writes the result like ``convert``'s outputs (sorted-keys
config, ``{"format": "pt"}`` safetensors, the one model card) into an atomic output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapterctl.core.lora.combine import CombinedAdapter, combine_adapters
from adapterctl.core.merge.plan import load_adapters
from adapterctl.errors import UsageError
from adapterctl.io.checkpoint.adapter_writer import write_adapter_files
from adapterctl.io.folders.model_card import adapter_card
from adapterctl.io.folders.output_dir import Input, check_output, replaces, write_output_dir
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir


@dataclass(frozen=True)
class CombineResult:
    """What ``merge --to-adapter`` wrote (or, with ``dry_run``, would write)."""

    dry_run: bool
    output: str | None
    method: str
    adapters: list[str]
    weights: list[float]
    modules: int
    r: int
    rank_pattern: dict
    warnings: list[str] = field(default_factory=list)
    replaces: list[dict] = field(default_factory=list)  # [{"path", "exists"}]: what the output replaces

    def to_dict(self) -> dict:
        return asdict(self)


def combined_card(combined: CombinedAdapter) -> tuple[str, list[str]]:
    cfg = combined.config
    summary = (
        f"Written by `adapterctl merge --to-adapter` ({len(combined.ranks)} modules, "
        f"r={cfg['r']}): one adapter combining several."
    )
    return adapter_card(cfg.get("base_model_name_or_path"), "LoRA adapter", summary)


def write_combined_adapter(combined: CombinedAdapter, folder: str | Path) -> list[str]:
    """adapter_config.json (sorted keys), adapter_model.safetensors and the model card, written by
    the same writer as ``convert`` (io/checkpoint/adapter_writer.py); returns the card's notes."""
    card, notes = combined_card(combined)
    write_adapter_files(folder, combined.config, combined.tensors, card)
    return notes


def combine_to_adapter(
    refs: list[str],
    output: str | Path | None,
    *,
    weights: list[float] | None = None,
    method: str = "cat",
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    force: bool = False,
    dry_run: bool = False,
    hub: HubOptions | None = None,
    keep: Sequence[Input] = (),
) -> CombineResult:
    """Combine the adapters ``refs`` (folders or Hub ids) with ``method`` (``linear`` is the exact
    ``cat``) and write the new adapter to ``output`` atomically, unless ``dry_run``. ``output``
    may not replace an adapter, nor any path in ``keep`` (other paths the command was given)."""
    if not refs or (output is None and not dry_run):
        raise UsageError(
            "--to-adapter needs at least one ADAPTER and --output",
            hint="adapterctl merge --to-adapter ./lora-a ./lora-b --output ./combined",
        )
    method = "cat" if method == "linear" else method
    weights = list(weights or [1.0] * len(refs))
    if len(weights) != len(refs):
        raise UsageError(f"--weights has {len(weights)} values for {len(refs)} adapters")
    dirs = [resolve_adapter_dir(r, hub) for r in refs]
    inputs = [*(Input.adapter(d, r) for d, r in zip(dirs, refs)), *keep]
    if output is not None:
        check_output(output, inputs)  # before the work, and for a dry run too
    replaced = replaces(output)
    adapters = load_adapters(dirs, refs)
    combined = combine_adapters(adapters, weights, method, rank, density, seed)
    notes = combined_card(combined)[1]
    if not dry_run and output is not None:  # checked above: only a dry run has no output
        with write_output_dir(output, force, inputs=inputs) as tmp:
            write_combined_adapter(combined, tmp)
    return CombineResult(
        dry_run,
        str(output) if output else None,
        method,
        list(refs),
        weights,
        len(combined.ranks),
        combined.config["r"],
        combined.config["rank_pattern"],
        notes,
        replaced,
    )
