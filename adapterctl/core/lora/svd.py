"""Low-rank SVD maths for rank reduction and extraction (float32 throughout).

The SVD of a product B @ A (B (m, r), A (r, n)) never needs the m x n matrix: with B = Qb Rb and
A^T = Qa Ra (thin QR), B A = Qb (Rb Ra^T) Qa^T, so the SVD of the r x r core Rb Ra^T = U S Vh gives
B A = (Qb U) S (Vh Qa^T). Cost O((m + n) r^2) instead of O(m n min(m, n)) (Halko, Martinsson and
Tropp 2011, section 5; the same trick as PEFT's ``convert_to_lora`` needs a dense ΔW for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

F32 = torch.float32
#: Above this smaller dimension extraction switches from a dense to a randomised SVD.
DENSE_SVD_LIMIT = 1024


@dataclass(frozen=True)
class LowRankSVD:
    U: torch.Tensor  # (m, q), orthonormal columns
    S: torch.Tensor  # (q,), descending
    Vh: torch.Tensor  # (q, n), orthonormal rows
    total_energy: float  # ||M||_F^2 of the matrix that was decomposed

    def truncate(self, k: int) -> LowRankSVD:
        return LowRankSVD(self.U[:, :k], self.S[:k], self.Vh[:k], self.total_energy)


def svd_of_product(B: torch.Tensor, A: torch.Tensor) -> LowRankSVD:
    """Exact thin SVD of B @ A from two QRs and an r x r SVD (see the module docstring)."""
    Bf, Af = B.to(F32), A.to(F32)
    Qb, Rb = torch.linalg.qr(Bf)  # (m, r), (r, r)
    Qa, Ra = torch.linalg.qr(Af.T)  # (n, r), (r, r)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)
    return LowRankSVD(Qb @ U, S, Vh @ Qa.T, float((S.double() ** 2).sum()))


def svd_of_matrix(M: torch.Tensor, k: int, seed: int = 0, niter: int = 2) -> LowRankSVD:
    """Top-k SVD of a dense matrix: exact for small ones, randomised (Halko et al. 2011, with
    ``niter`` power iterations and 10 oversamples) when min(m, n) > DENSE_SVD_LIMIT."""
    Mf = M.to(F32)
    total = float((Mf.double() ** 2).sum())
    if min(Mf.shape) <= DENSE_SVD_LIMIT:
        U, S, Vh = torch.linalg.svd(Mf, full_matrices=False)
        return LowRankSVD(U, S, Vh, total)
    q = min(k + 10, min(Mf.shape))
    with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(Mf, q=q, niter=niter)
    return LowRankSVD(U, S, V.T, total)


def choose_rank(svd: LowRankSVD, rank: int | None = None, energy: float | None = None) -> int:
    """k = min(rank, available), or the smallest k keeping ``energy`` of ||M||_F^2 (at least 1)."""
    avail = int(svd.S.numel())
    if rank is not None:
        return max(1, min(rank, avail))
    if energy is None:  # a caller's bug: every command checks for one of the two first
        raise ValueError("choose_rank needs a rank or an energy")
    if svd.total_energy <= 0:
        return 1
    kept = torch.cumsum(svd.S.double() ** 2, 0) / svd.total_energy
    hit = (kept >= energy - 1e-12).nonzero()
    k = int(hit[0]) + 1 if hit.numel() else avail
    return max(1, min(k, avail))


def captured_energy(svd: LowRankSVD, k: int) -> float:
    """Fraction of ||M||_F^2 kept by the top k singular values (1.0 for a zero matrix)."""
    if svd.total_energy <= 0:
        return 1.0
    return min(1.0, float((svd.S[:k].double() ** 2).sum()) / svd.total_energy)


def relative_error(svd: LowRankSVD, k: int) -> float:
    """||M - M_k||_F / ||M||_F (Eckart-Young)."""
    return math.sqrt(max(0.0, 1.0 - captured_energy(svd, k)))


def lora_factors(svd: LowRankSVD, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with scaling · B @ A = U S Vh: the singular values split evenly between the
    factors (balanced magnitudes train and quantise best) and divided by the module's scaling."""
    root = torch.sqrt(svd.S / abs(scaling))
    B = svd.U * root.unsqueeze(0)
    A = root.unsqueeze(1) * svd.Vh * (1.0 if scaling > 0 else -1.0)  # a negative alpha exists
    return A.contiguous(), B.contiguous()
