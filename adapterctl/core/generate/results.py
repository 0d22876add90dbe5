"""What ``generate`` is asked for and what it makes, shared by every engine that runs it (ours,
vLLM's offline engine, an OpenAI-compatible endpoint): the decoding options, one completion, one
run's result. Pure Python, no torch: the endpoint client and the JSON schema need none.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterctl.errors import AdapterctlError, UsageError

#: finish reasons, the same for every engine
FINISH_REASONS = ("eos", "stop", "length", "interrupted")


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding options. Sampling is on when ``temperature > 0`` or top-k / top-p are given
    (temperature then defaults to 1.0); otherwise greedy."""

    max_new_tokens: int = 64
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    @property
    def sampling(self) -> bool:
        if self.temperature is not None:
            return self.temperature > 0
        return self.top_p is not None or self.top_k is not None

    def check(self) -> None:
        """Refuse nonsensical values with a usage error naming the option."""
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise UsageError(
                f"--temperature must be >= 0, got {self.temperature}",
                hint="Use 0 (or leave it out) for greedy decoding.",
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise UsageError(
                f"--repetition-penalty must be > 0, got {self.repetition_penalty}",
                hint="1.0 means no penalty; values above 1 discourage repeats.",
            )
        if any(s == "" for s in self.stop):
            raise UsageError("--stop strings must not be empty")


@dataclass(frozen=True)
class Completion:
    """One finished (or interrupted) completion. ``adapter``: None for the base model alone.

    ``completion_token_ids`` is None where the engine does not say (an OpenAI-compatible server
    that returns text only); ``num_tokens`` then comes from the server's usage count."""

    id: str
    prompt: str
    adapter: str | None
    completion: str
    completion_token_ids: tuple[int, ...] | None
    finish_reason: str  # "eos" | "stop" (a --stop string) | "length" | "interrupted"
    prompt_tokens: int | None
    tokens_per_second: float
    logprobs: tuple[float, ...] | None = None
    token_count: int | None = None  # when the ids are unknown

    @property
    def num_tokens(self) -> int:
        if self.completion_token_ids is not None:
            return len(self.completion_token_ids)
        return self.token_count or 0

    def to_dict(self) -> dict:
        ids = self.completion_token_ids
        d = {
            "id": self.id,
            "prompt": self.prompt,
            "adapter": self.adapter,
            "completion": self.completion,
            "completion_token_ids": list(ids) if ids is not None else None,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.num_tokens,
            "tokens_per_second": round(self.tokens_per_second, 2),
        }
        if self.logprobs is not None:
            d["logprobs"] = list(self.logprobs)
        return d


@dataclass(frozen=True)
class GenerationResult:
    completions: tuple[Completion, ...]
    interrupted: bool
    seed: int | None
    mode: str  # how adapters were applied: "base" | "folded" | "unmerged" | "mixed" | engine's
    elapsed_s: float
    warnings: tuple[str, ...] = ()
    #: what ended the run early (an endpoint that failed mid-way), with the completions made
    #: before it kept; None when the run finished (or was interrupted: ``interrupted``)
    error: AdapterctlError | None = None

    @property
    def tokens_per_second(self) -> float:
        n = sum(c.num_tokens for c in self.completions)
        return n / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 3),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "warnings": list(self.warnings),
            "completions": [c.to_dict() for c in self.completions],
        }
