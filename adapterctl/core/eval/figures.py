"""The figures of one variant against the reference, streamed batch by batch: per scored position
KL(reference || variant), whether the argmaxes agree, and the variant's negative log-likelihood of
the data's next token. Only those per-position floats are kept (one each per position), never a
batch's logits after its batch.

KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in nats, on float64 log-softmaxes; the 99th
percentile is linear interpolation between order statistics (numpy's and torch's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Figures:
    """One variant's figures over every scored position."""

    positions: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    perplexity: float


#: rows of (rows, vocabulary) float64 log-probabilities made at once: bounded memory whatever the batch
CHUNK = 256


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in float64, whatever the model computed in: the KL of two
    close copies is a difference of nearly equal numbers, and float32 log-softmaxes put a relative
    error of about 1e-2 on a KL of 1e-6 (a bf16 merge's)."""
    return torch.log_softmax(logits.double(), dim=-1)


@dataclass
class Tally:
    """Per-position values of one variant, appended batch by batch."""

    kl: list[torch.Tensor] = field(default_factory=list)
    agree: list[torch.Tensor] = field(default_factory=list)
    nll: list[torch.Tensor] = field(default_factory=list)
    #: (sequence index, first position whose argmax differs from the reference's, or None)
    divergence: list[tuple[int, int | None]] = field(default_factory=list)

    def add(self, ref_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Add N scored positions: ``ref_logits`` and ``logits`` are (N, V) logits of the reference
        and the variant, ``targets`` the (N,) next tokens. Returns the (N,) agreement flags."""
        agree = []
        for i in range(0, len(targets), CHUNK):
            p, q = log_probs(ref_logits[i : i + CHUNK]), log_probs(logits[i : i + CHUNK])
            self.kl.append((p.exp() * (p - q)).sum(-1).clamp_min(0.0).cpu())  # rounding can dip below 0
            agree.append((p.argmax(-1) == q.argmax(-1)).cpu())
            self.nll.append(_nll(q, targets[i : i + CHUNK]))
        self.agree += agree
        return torch.cat(agree)

    def add_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """The reference's own positions: only its likelihood of the data counts."""
        for i in range(0, len(targets), CHUNK):
            self.nll.append(_nll(log_probs(logits[i : i + CHUNK]), targets[i : i + CHUNK]))

    def perplexity(self) -> float:
        nll = torch.cat(self.nll)
        return math.exp(nll.mean().item()) if nll.numel() else float("nan")

    def figures(self) -> Figures:
        kl = torch.cat(self.kl)
        agree = torch.cat(self.agree)
        return Figures(
            positions=int(kl.numel()),
            kl_mean=kl.mean().item(),
            kl_p99=float(np.percentile(kl.numpy(), 99)),
            kl_max=kl.max().item(),
            top1_agreement=agree.double().mean().item(),
            perplexity=self.perplexity(),
        )


def _nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (-logp.gather(-1, targets.to(logp.device)[:, None]).squeeze(-1)).cpu()
