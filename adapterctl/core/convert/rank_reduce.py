"""Rank reduction: truncated SVD of each module's ΔW = s·B A without forming ΔW (core/lora/svd.py).

Alpha handling (the choice, and why): the new config keeps ``lora_alpha``, ``alpha_pattern`` and
``use_rslora`` unchanged and writes the new ranks as ``r`` (the most common rank, ties to the
larger) plus ``rank_pattern`` with full module paths. Each module's new scaling s' then follows
from PEFT's own rules (spec 1.5, 2), and the truncated SVD U_k S_k Vh_k is folded into the
factors as B' = U_k √(S_k/s'), A' = √(S_k/s') Vh_k, so s'·B'A' equals the rank-k approximation
exactly, for plain LoRA and rsLoRA alike, without an alpha_pattern entry per module. (s' differs
from the old s when r changes; that only matters for further training, not for outputs.)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from adapterctl.core.adapter.config import BASE_MUTATING_INITS, parse_adapter_config
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.convert.draft import (
    AdapterDraft,
    ModuleReport,
    module_keys,
    refuse_kasa,
    view_adapter,
)
from adapterctl.core.lora.loaded import tied_pairs
from adapterctl.core.lora.svd import (
    LowRankSVD,
    captured_energy,
    choose_rank,
    lora_factors,
    relative_error,
    svd_of_product,
)
from adapterctl.errors import UnsupportedError, UsageError

HINT = "e.g. --rank 8 (every module rank 8) or --energy 0.95 (per-module ranks)."


def ranked_config(doc: dict, ranks: dict[str, int]) -> dict:
    """Config with r = the most common rank and full-path rank_pattern entries for the rest."""
    counts = Counter(ranks.values())
    r = max(counts, key=lambda k: (counts[k], k))
    return {**doc, "r": r, "rank_pattern": {p: k for p, k in sorted(ranks.items()) if k != r}}


def module_svd(w) -> LowRankSVD:
    """SVD of the module's ΔW in LoRA layout (out, in); conv kernels are flattened."""
    A2, B2 = w.A.flatten(1), w.B.flatten(1)
    if B2.shape[1] != A2.shape[0]:
        raise UnsupportedError(f"{w.path}: grouped conv LoRA cannot be rank-reduced")
    return svd_of_product(B2.float() * w.scaling, A2.float())


def reduce_rank(draft: AdapterDraft, rank: int | None = None, energy: float | None = None) -> AdapterDraft:
    """Rank-reduce every module to ``rank`` or to the smallest rank keeping ``energy`` of
    ||ΔW||_F^2 (Eckart-Young: the truncated SVD is the best approximation of that rank)."""
    if (rank is None) == (energy is None):
        raise UsageError("give exactly one of --rank and --energy", hint=HINT)
    if rank is not None and rank < 1:
        raise UsageError(f"--rank must be at least 1, got {rank}", hint=HINT)
    if energy is not None and not 0 < energy <= 1:
        raise UsageError(f"--energy must be in (0, 1], got {energy}", hint=HINT)
    view = view_adapter(draft)
    refuse_kasa(view.config, draft.source, "its rank")
    if view.config.init_kind in BASE_MUTATING_INITS:
        raise UsageError(
            f"{draft.source}: init_lora_weights={view.config.init_lora_weights!r}: "
            "the adapter acts on a mutated base, its rank cannot change as is",
            hint="Convert it in the same run: add --pissa-init INIT or --base BASE.",
        )
    svds, reports = {}, []
    pairs = dict((h, e) for e, h in tied_pairs(view.modules))  # ensure_weight_tying
    for path, w in sorted(view.modules.items(), key=lambda kv: kv[0] in pairs):
        svd = module_svd(w)  # a tied lm_head comes last and takes its embedding's rank
        k = svds[pairs[path]].S.numel() if path in pairs else choose_rank(svd, rank, energy)
        svds[path] = svd.truncate(k)
        reports.append(ModuleReport(path, w.r, k, relative_error(svd, k), captured_energy(svd, k)))
    config = ranked_config(draft.config, {p: s.S.numel() for p, s in svds.items()})
    notes = draft.notes
    if config.get("use_bdlora"):  # the new factors are full matrices: plain LoRA
        config = {**config, "use_bdlora": None}
        notes += ("BD-LoRA: the reduced factors are full matrices; use_bdlora is dropped",)
    tensors = _refactor(draft, view, svds, config)
    keys = module_keys(draft)
    for head, emb in pairs.items():  # still the embedding's factors transposed: still tied
        tensors[keys[head].keys["A"]] = tensors[keys[emb].keys["B"]].T.contiguous()
        tensors[keys[head].keys["B"]] = tensors[keys[emb].keys["A"]].T.contiguous()
    if view.config.use_dora:
        notes += ("DoRA: the magnitude vector is kept; the error report covers ΔW only",)
    return replace(
        draft,
        config=config,
        tensors=tensors,
        modules=tuple(reports),
        notes=notes,
        steps=draft.steps + ("rank-reduce",),
    )


def _refactor(draft: AdapterDraft, view, svds: dict[str, LowRankSVD], config: dict) -> dict:
    cfg = parse_adapter_config(config, draft.source)
    keys = module_keys(draft)
    tensors = dict(draft.tensors)
    for path, svd in svds.items():
        w = view.modules[path]
        k = svd.S.numel()
        _, _, s_new = module_scaling(cfg, path)
        A, B = lora_factors(svd, s_new)
        # factors are float32 here; one rounding to the adapter's dtype
        tensors[keys[path].keys["A"]] = A.reshape(k, *w.A.shape[1:]).to(w.A.dtype)
        tensors[keys[path].keys["B"]] = B.reshape(w.B.shape[0], k, *w.B.shape[2:]).to(w.B.dtype)
    return tensors
