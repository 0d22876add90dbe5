"""LoRA factors that hold what a serving engine cannot (for ``convert --for``), in float32.

Every module is carried as ``Factors``: ΔW in LoRA layout (linear (out, in), embedding (d, V),
spec 4.2) equals ``Bs @ A``, with the scaling already inside ``Bs``; the writer divides by the
output config's scaling once. Exact constructions (up to float32 rounding):

- a full weight replacement W' of a linear layer: ΔW = W' - W has rank <= min(out, in), held by
  A = I (in <= out) or Bs = I;
- of an embedding table: ΔW^T = (W' - W)^T, d x V, held by Bs = I_d, A = ΔW^T;
- trainable-token rows (spec 4.3, ``W[idx] = rows``): rank len(idx) with one-hot factors;
- a module kind missing in some layers: zero factors (LoRAX and TGI drop a kind a layer lacks).

DoRA is not a low-rank change of W: m ⊙ (W + sBA) / ||W + sBA|| - W rescales every row, so
it is approximated by the truncated SVD of that difference (Eckart-Young: the best rank-k
approximation), with its error reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.lora.delta import fold_lora
from adapterctl.core.lora.loaded import LoraWeights
from adapterctl.core.lora.svd import (
    captured_energy,
    choose_rank,
    lora_factors,
    relative_error,
    svd_of_matrix,
)
from adapterctl.errors import UnsupportedError

F32 = torch.float32


@dataclass(frozen=True)
class Factors:
    kind: str  # "linear" | "embedding" | "conv"
    A: torch.Tensor  # (r, in...) / embedding (r, V)
    Bs: torch.Tensor  # (out, r...) / embedding (d, r): B times the module's scaling
    dtype: torch.dtype  # written dtype
    #: (A, B, scaling) as read, for modules no step touched: written bit for bit when the
    #: output config gives them the same rank and scaling
    original: tuple[torch.Tensor, torch.Tensor, float] | None = None
    magnitude: torch.Tensor | None = None  # DoRA, kept only for engines that serve DoRA

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    def padded(self, rank: int) -> Factors:
        """Zero rows of A and zero columns of B up to ``rank``: ΔW is unchanged, exactly."""
        extra = rank - self.r
        if extra <= 0:
            return self
        A = torch.cat([self.A, self.A.new_zeros((extra, *self.A.shape[1:]))], dim=0)
        Bs = torch.cat([self.Bs, self.Bs.new_zeros((self.Bs.shape[0], extra, *self.Bs.shape[2:]))], dim=1)
        return replace(self, A=A, Bs=Bs, original=None)


def from_lora(w: LoraWeights) -> Factors:
    return Factors(
        w.kind, w.A.to(F32), w.B.to(F32) * w.scaling, w.A.dtype, (w.A, w.B, w.scaling), w.magnitude
    )


def concat(a: Factors, b: Factors) -> Factors:
    """ΔW_a + ΔW_b as one LoRA of rank r_a + r_b: [A_a; A_b], [Bs_a | Bs_b]."""
    return replace(
        a, A=torch.cat([a.A, b.A.to(F32)], 0), Bs=torch.cat([a.Bs, b.Bs.to(F32)], 1), original=None
    )


def lora_layout(delta: torch.Tensor, kind: str, fan_in_fan_out: bool) -> torch.Tensor:
    """A change of the base weight, in the LoRA layout (spec 4.2, 6.1)."""
    if kind == "embedding":
        return delta.T  # table (V, d) -> (d, V)
    return delta.T if fan_in_fan_out else delta


def full_rank(delta: torch.Tensor, kind: str, dtype: torch.dtype) -> Factors:
    """Exact factors of a dense change in LoRA layout: rank min(rows, cols)."""
    D = delta.to(F32)
    out, inp = D.shape
    if kind == "embedding" or out <= inp:
        return Factors(kind, D.clone(), torch.eye(out, dtype=F32), dtype)  # Bs = I
    return Factors(kind, torch.eye(inp, dtype=F32), D.clone(), dtype)  # A = I


def token_rows(
    indices: list[int], rows: torch.Tensor, W: torch.Tensor, dtype: torch.dtype
) -> tuple[Factors, Factors]:
    """Trainable tokens W[idx] = rows as (embedding LoRA, linear LoRA on a tied lm_head)."""
    D = rows.to(F32) - W[indices].to(F32)  # (k, d)
    k, V = len(indices), W.shape[0]
    onehot = torch.zeros((k, V), dtype=F32)
    onehot[torch.arange(k), torch.tensor(indices)] = 1.0
    emb = Factors("embedding", onehot, D.T.contiguous(), dtype)  # ΔW^T = D^T onehot
    head = Factors("linear", D.contiguous(), onehot.T.contiguous(), dtype)  # ΔW = onehot^T D
    return emb, head


def zeros_like_module(f: Factors) -> Factors:
    return replace(f, A=torch.zeros_like(f.A), Bs=torch.zeros_like(f.Bs), original=None, magnitude=None)


@dataclass(frozen=True)
class SvdReport:
    r_before: int
    r_after: int
    rel_error: float
    energy: float
    sq_norm: float  # ||ΔW_dora||_F^2, to weight the whole-adapter error


def dora_as_lora(
    w: LoraWeights, W: torch.Tensor, fan_in_fan_out: bool, rank: int | None, energy: float | None
) -> tuple[Factors, SvdReport]:
    """The exact DoRA weight minus the base (spec 6.3), as a truncated-SVD LoRA of ``rank``
    (default: the module's own rank) or the rank keeping ``energy`` of ||ΔW||_F^2."""
    if w.kind == "conv":
        raise UnsupportedError(
            f"{w.path}: DoRA on a conv layer cannot be converted to LoRA here",
            hint="No serving engine adapts conv layers of a language model.",
        )
    kind = LayerKind.CONV1D_GPT2 if fan_in_fan_out else w.kind  # the base layer's kind
    W32 = W.to(F32)
    D = lora_layout(fold_lora(W32.clone(), W, w, kind, device=W.device) - W32, w.kind, fan_in_fan_out)
    k_max = min(D.shape)
    svd = svd_of_matrix(D, min(rank or w.r, k_max))
    k = choose_rank(svd, rank if rank is not None or energy is not None else w.r, energy)
    cut = svd.truncate(k)
    A, Bs = lora_factors(cut, 1.0)
    rep = SvdReport(w.r, k, _tail_error(svd, k, k_max), captured_energy(svd, k), svd.total_energy)
    return Factors(w.kind, A, Bs, w.A.dtype), rep


def _tail_error(svd, k: int, k_max: int) -> float:
    """||M - M_k||_F / ||M||_F from the dropped singular values when the SVD has all of them
    (sqrt(1 - kept energy) loses half the digits near 0), else from the kept energy."""
    if svd.S.numel() < k_max:
        return relative_error(svd, k)
    S = svd.S.double()
    total = float((S**2).sum())
    return math.sqrt(float((S[k:] ** 2).sum()) / total) if total > 0 else 0.0


def whole_error(reports: list[SvdReport]) -> float:
    """||ΔW_dora - ΔW_lora||_F / ||ΔW_dora||_F over all modules together."""
    total = sum(r.sq_norm for r in reports)
    lost = sum(r.sq_norm * r.rel_error**2 for r in reports)
    return math.sqrt(lost / total) if total > 0 else 0.0
