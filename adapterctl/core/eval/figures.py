"""The figures of one variant against the reference, streamed batch by batch: per scored position
KL(reference || variant), whether the argmaxes agree, and the variant's negative log-likelihood of
the data's next token. Only those per-position floats are kept (one each per position), never a
batch's logits after its batch.

KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in nats, on float32 log-softmaxes; the 99th
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


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary, in float32 whatever the model computed in."""
    return torch.log_softmax(logits.float(), dim=-1)


@dataclass
class Tally:
    """Per-position values of one variant, appended batch by batch."""

    kl: list[torch.Tensor] = field(default_factory=list)
    agree: list[torch.Tensor] = field(default_factory=list)
    nll: list[torch.Tensor] = field(default_factory=list)
    #: (sequence index, first position whose argmax differs from the reference's, or None)
    divergence: list[tuple[int, int | None]] = field(default_factory=list)

    def add(self, ref_logp: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Add N scored positions: ``ref_logp`` and ``logp`` are (N, V) log-probabilities, ``targets``
        the (N,) next tokens. Returns the (N,) agreement flags."""
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0.0)  # rounding can dip below 0
        agree = ref_logp.argmax(-1) == logp.argmax(-1)
        nll = -logp.gather(-1, targets[:, None]).squeeze(-1)
        self.kl.append(kl.double().cpu())
        self.agree.append(agree.cpu())
        self.nll.append(nll.double().cpu())
        return agree

    def add_nll(self, logp: torch.Tensor, targets: torch.Tensor) -> None:
        """The reference's own positions: only its likelihood of the data counts."""
        self.nll.append((-logp.gather(-1, targets[:, None]).squeeze(-1)).double().cpu())

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
