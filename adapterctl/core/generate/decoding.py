"""Choosing the next token: greedy, or sampling with temperature / top-k / top-p, and the
repetition penalty. Same order and semantics as transformers' logits processors (repetition
penalty, temperature, top-k, top-p; CTRL paper arXiv:1909.05858 for the penalty, Holtzman et al.
arXiv:1904.09751 for nucleus sampling), so ``--seed`` runs are comparable with ``model.generate``.
"""

from __future__ import annotations

import secrets

import torch

from adapterctl.core.generate.results import DecodingConfig


class TokenChooser:
    """Picks one token per row from the last position's logits; owns the run's one generator so a
    seed reproduces a whole run (same prompts, batch size and device)."""

    def __init__(self, cfg: DecodingConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.seed = cfg.seed
        self.generator = None
        if cfg.sampling:
            if self.seed is None:  # fresh, and reported so the run can be repeated
                self.seed = secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)

    def reset(self) -> None:
        """Restart the random stream (``--compare`` gives every variant the same draws)."""
        if self.generator is not None and self.seed is not None:  # both are set when sampling
            self.generator.manual_seed(self.seed)

    def choose(
        self, logits: torch.Tensor, seen: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``logits`` (B, V) float32 -> (tokens (B,), log-probabilities (B,) or None).

        Log-probabilities are those of the model itself (log-softmax of the raw logits, as
        transformers' ``output_logits=True`` returns them), before penalties and sampling
        filters, so they are comparable across decoding settings."""
        scores = logits
        if seen is not None and self.cfg.repetition_penalty not in (None, 1.0):
            scores = apply_repetition_penalty(scores, seen, self.cfg.repetition_penalty)
        if self.cfg.sampling:
            tokens = self._sample(scores)
        else:
            tokens = scores.argmax(dim=-1)
        logprobs = None
        if self.cfg.logprobs:
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
        return tokens, logprobs

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        temperature = self.cfg.temperature if self.cfg.temperature is not None else 1.0
        if temperature != 1.0:
            scores = scores / temperature
        if self.cfg.top_k is not None:
            scores = filter_top_k(scores, self.cfg.top_k)
        if self.cfg.top_p is not None and self.cfg.top_p < 1.0:
            scores = filter_top_p(scores, self.cfg.top_p)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive logits of already-seen tokens by
    ``penalty``, multiply negative ones (so both move towards less likely)."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[:, -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def filter_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (ties resolved like
    transformers' TopPLogitsWarper: sort ascending, drop the prefix with mass <= 1 - top_p)."""
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[:, -1] = False  # always keep the most likely token
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def mark_seen(seen: torch.Tensor, tokens: torch.Tensor) -> None:
    """Record one new token per row in the (B, V) seen-mask used by the repetition penalty."""
    seen.scatter_(1, tokens[:, None], True)
