"""Rank reduction of ``target_parameters`` (MoE expert) LoRA, one expert at a time (spec 5.6).

PEFT keeps one rank per targeted parameter (``lora_A (r·E, in)``, ``lora_B (out, r·E)``), so every
expert of a parameter gets the same new rank k: ``--rank K`` gives min(K, r), ``--energy E`` the
smallest k with which every expert keeps E of its ||ΔW_e||_F^2. Each expert's
``ΔW_e = s·B[:, :, e] @ A[e]`` is decomposed exactly (core/lora/svd.py, two QRs and an r x r SVD)
and truncated (Eckart-Young), and the factors are packed back in PEFT's layout: A rows
expert-major, B columns rank-major, expert-minor. The config follows rank_reduce.py's choice:
alpha and rsLoRA kept, the new ranks as ``r`` plus full-path ``rank_pattern`` entries
(``module.param``, what PEFT matches for a ParamWrapper), each new scaling s' folded into the
factors. Adapters that also hold module LoRA are refused: one run reduces one kind.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter.config import parse_adapter_config
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.convert.draft import AdapterDraft, ModuleReport, view_adapter
from adapterctl.core.convert.rank_reduce import ranked_config
from adapterctl.core.lora.expert_delta import ExpertWeights
from adapterctl.core.lora.svd import (
    LowRankSVD,
    choose_rank,
    lora_factors,
    svd_of_product,
)
from adapterctl.errors import UnsupportedError, UsageError

HINT = "e.g. --rank 8 (every expert rank 8) or --energy 0.95."


def reduce_expert_ranks(
    draft: AdapterDraft, rank: int | None = None, energy: float | None = None
) -> AdapterDraft:
    if (
        (rank is None) == (energy is None)
        or (rank is not None and rank < 1)
        or (energy is not None and not 0 < energy <= 1)
    ):
        raise UsageError("give exactly one of --rank (>= 1) and --energy (in (0, 1])", hint=HINT)
    view = view_adapter(draft)
    if view.modules:
        raise UnsupportedError(
            f"{draft.source}: holds module LoRA ({len(view.modules)} modules) besides "
            "target_parameters: convert reduces the rank of one or the other",
            hint="Attach or merge it as it is; rank reduction covers expert-only adapters.",
        )
    svds: dict[str, list[LowRankSVD]] = {}
    reports = []
    for path, w in sorted(view.experts.items()):
        per_expert = [
            svd_of_product(_b(w, e).float() * w.scaling, _a(w, e).float()) for e in range(w.experts)
        ]
        k = min(w.r, max(choose_rank(s, rank, energy) for s in per_expert))
        svds[path] = [s.truncate(k) for s in per_expert]
        total = sum(s.total_energy for s in per_expert)
        kept = sum(float((s.S[:k].double() ** 2).sum()) for s in per_expert)
        share = 1.0 if total <= 0 else min(1.0, kept / total)
        reports.append(ModuleReport(path, w.r, k, math.sqrt(max(0.0, 1.0 - share)), share))
    config = ranked_config(draft.config, {p: _rank(s) for p, s in svds.items()})
    cfg = parse_adapter_config(config, draft.source)
    found, _, _ = X.split_expert_keys({k: tuple(t.shape) for k, t in draft.tensors.items()}, view.config)
    tensors = dict(draft.tensors)
    for path, parts in svds.items():
        w, keys = view.experts[path], found[path].keys
        A, B = _packed(parts, _rank(parts), module_scaling(cfg, path)[2])
        tensors[keys["A"]] = A.to(w.A.dtype)  # float32 until here: one rounding
        tensors[keys["B"]] = B.to(w.B.dtype)
    return replace(
        draft,
        config=config,
        tensors=tensors,
        modules=tuple(reports),
        steps=draft.steps + ("rank-reduce-experts",),
    )


def _a(w: ExpertWeights, e: int) -> torch.Tensor:
    return w.A[e * w.r : (e + 1) * w.r]  # rows expert-major


def _b(w: ExpertWeights, e: int) -> torch.Tensor:
    return w.B[:, e :: w.experts]  # columns rank-major, expert-minor


def _rank(parts: list[LowRankSVD]) -> int:
    return max(int(s.S.numel()) for s in parts)


def _packed(parts: list[LowRankSVD], k: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (k·E, in) and B (out, k·E) in PEFT's layout; an expert with fewer than k singular
    values (a zero ΔW_e) gets zero rows and columns."""
    As, Bs = [], []
    for s in parts:
        a, b = lora_factors(s, scaling)
        pad = k - a.shape[0]
        As.append(torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a)
        Bs.append(torch.cat([b, b.new_zeros(b.shape[0], pad)], 1) if pad else b)
    return torch.cat(As).contiguous(), torch.stack(Bs, 2).reshape(Bs[0].shape[0], -1).contiguous()
