"""``convert``: rewrite an adapter as another, equivalent (or rank-reduced) PEFT LoRA adapter.

Steps run on an :class:`AdapterDraft` (config dict + tensors under their checkpoint keys, so every
extra the source carried keeps its exact key): mutated-init conversion (:mod:`mutated`, spec 7),
rank reduction (:mod:`rank_reduce`), extraction (:mod:`extract`), serving cleanup and dtype
casting (:mod:`format`). :func:`write_draft` validates the result by loading it back in
memory with the same loader ``attach`` uses, then writes it atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapterctl.core.adapter.config import (
    check_lora_type,
    parse_adapter_config,
    read_adapter_config,
)
from adapterctl.core.adapter.keys import ModuleKeys, split_keys
from adapterctl.core.adapter.problems import raise_first_error
from adapterctl.core.adapter.validate import config_problems
from adapterctl.core.lora.loaded import (
    LoadedAdapter,
    build_adapter,
    read_adapter_tensors,
)
from adapterctl.errors import AdapterctlError, UnsupportedError
from adapterctl.io.checkpoint.adapter_writer import write_adapter_files
from adapterctl.io.folders.adapter_dir import AdapterFiles, locate_adapter_files
from adapterctl.io.folders.model_card import adapter_card
from adapterctl.io.folders.output_dir import Input, write_output_dir


@dataclass(frozen=True)
class ModuleReport:
    module: str
    r_before: int
    r_after: int
    rel_error: float | None = None  # ||ΔW - ΔW_k||_F / ||ΔW||_F
    energy: float | None = None  # fraction of ||ΔW||_F^2 kept


@dataclass(frozen=True)
class AdapterDraft:
    """An adapter being converted: what will become adapter_config.json and the tensors file."""

    config: dict
    tensors: dict[str, torch.Tensor]
    source: str
    steps: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    modules: tuple[ModuleReport, ...] = ()


@dataclass(frozen=True)
class ConvertResult:
    output: str
    source: str
    steps: list[str]
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict
    num_modules: int
    dtypes: list[str]
    modules: list[ModuleReport] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----- reading and validating --------------------------------------------------------------
def read_draft(
    folder: str | Path, source: str | None = None, engines: tuple[str, ...] = (), experts_ok: bool = False
) -> AdapterDraft:
    """Load an adapter folder for conversion. Unlike ``load_adapter`` this accepts mutated-init
    configs (pissa, olora, corda, lora_ga): converting them is the point."""
    files = locate_adapter_files(folder, source)
    cfg = read_adapter_config(files.config)
    check_lora_type(cfg, files.source)
    # the variants nothing here implements (mutated inits are fine: converting them is the point)
    raise_first_error([p for p in config_problems(cfg) if p.code == "unsupported_variant"], files.source)
    if engines or not experts_ok:  # experts_ok: --rank/--energy, --dtype, --to-safetensors
        refuse_target_parameters(cfg, files.source, engines, folder)
    draft = AdapterDraft(dict(cfg.raw), read_adapter_tensors(files), files.source)
    view_adapter(draft)  # validates (core/adapter/validate.py), as every loader does
    return draft


def view_adapter(draft: AdapterDraft) -> LoadedAdapter:
    """The draft as the shared loader sees it (per-module LoraWeights with r, alpha, scaling)."""
    cfg = parse_adapter_config(draft.config, draft.source)
    files = AdapterFiles(Path("."), Path("adapter_config.json"), None, None, draft.source)
    return build_adapter("default", cfg, files, draft.tensors)


def module_keys(draft: AdapterDraft) -> dict[str, ModuleKeys]:
    return split_keys({k: tuple(v.shape) for k, v in draft.tensors.items()}).modules


def refuse_target_parameters(
    cfg, source: str, engines: tuple[str, ...] = (), folder: str | Path | None = None
) -> None:
    """LoRA on raw parameters (MoE experts, spec 5.6) keeps r·E rows per factor, nested keys and
    no module of its own: convert's steps (rank reduction, casts, engine layouts, GGUF, MLX) are
    written for module LoRA and would rewrite it wrongly, so it is refused as a whole; with
    ``--for ENGINE`` the refusal quotes each engine's own reason (core/engine_rules/rules.py)."""
    if not cfg.raw.get("target_parameters"):
        return
    reasons = ""
    if engines and folder is not None:
        from adapterctl.core.engine_rules.check import ENGINES, engine_names
        from adapterctl.core.engine_rules.facts import read_adapter_facts
        from adapterctl.core.engine_rules.rules import expert_findings

        facts = read_adapter_facts(folder, source)
        found = [f for n in engine_names(list(engines)) for f in expert_findings(ENGINES[n], facts)]
        reasons = "; ".join(f"{f.message} ({f.source.cite()})" for f in found)
    raise UnsupportedError(
        f"{source}: adapter uses target_parameters {cfg.raw['target_parameters']} (LoRA on "
        "MoE expert parameters): convert rewrites it only with --rank/--energy (per expert), "
        "--dtype and --to-safetensors" + (f"; no engine asked for serves it: {reasons}" if reasons else ""),
        hint="attach, generate and merge apply it exactly; `adapterctl check ADAPTER` gives each "
        "serving engine's verdict.",
    )


def refuse_kasa(cfg, source: str, what: str) -> None:
    """KaSA acts on an SVD-truncated base and its lora_diag sits between A and B: rewriting the
    factors as another adapter is not exact (PEFT: supports_lora_conversion is False)."""
    if cfg.kasa:
        raise UnsupportedError(
            f"{source}: KaSA adapter: {what} cannot change exactly (it acts on "
            "an SVD-truncated base, with lora_diag between A and B)",
            hint="Merge it into the base model instead (adapterctl merge); "
            "--dtype and --for-serving apply as is.",
        )


def check_same_scaling(before: LoadedAdapter, after: LoadedAdapter) -> None:
    """Internal guard: a conversion that claims exactness must keep each module's s."""
    for path, w in before.modules.items():
        s = after.modules[path].scaling
        if not math.isclose(s, w.scaling, rel_tol=1e-9):
            raise AdapterctlError(
                f"internal error: {path}: scaling changed {w.scaling} -> {s}",
                hint="This is a bug in adapterctl; please report it.",
            )


# ----- writing -----------------------------------------------------------------------------
def write_draft(
    draft: AdapterDraft, dest: str | Path, force: bool = False, *, inputs: Sequence[Input]
) -> ConvertResult:
    """Validate the draft with the shared loader, then write it atomically to ``dest``, which may
    replace none of the conversion's ``inputs``."""
    view = view_adapter(draft)
    cfg = view.config
    summary = (
        "Written by `adapterctl convert` ("
        + ", ".join(draft.steps or ("rewrite",))
        + ")."
        + (
            " It is a plain LoRA adapter for the original (unmodified) base model."
            if "mutated-init" in draft.steps
            else ""
        )
    )
    card, card_notes = adapter_card(cfg.base_model_name_or_path, "LoRA adapter", summary)
    with write_output_dir(dest, force, inputs=inputs, flag="OUT") as tmp:
        write_adapter_files(tmp, draft.config, draft.tensors, card)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in draft.tensors.values()})
    return ConvertResult(
        str(dest),
        draft.source,
        list(draft.steps),
        cfg.r,
        cfg.lora_alpha,
        cfg.use_rslora,
        dict(cfg.rank_pattern),
        len(view.modules) + len(view.experts),
        dtypes,
        list(draft.modules),
        list(draft.removed),
        list(draft.notes) + card_notes,
    )
