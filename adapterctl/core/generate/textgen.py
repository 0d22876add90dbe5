"""Greedy completions for ``attach --prompt`` and the public API, in attach's JSON shape; the
decoding itself is generate's (core/generate/loop.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Completion:
    prompt: str
    completion: str
    completion_token_ids: list[int]

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "completion": self.completion,
            "completion_token_ids": self.completion_token_ids,
        }


def greedy_complete(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[Completion]:
    """Greedy completions, one prompt per batch row (no padding effects), stopping at EOS: the
    decoder of ``generate`` (core/generate/loop.py) with its defaults, reduced to attach's shape."""
    from adapterctl.core.generate.decoding import DecodingConfig
    from adapterctl.core.generate.loop import generate_completions
    from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec

    specs = [PromptSpec(str(i), p, adapter=BASE_KEY) for i, p in enumerate(prompts)]
    result = generate_completions(
        model, tokenizer, specs, DecodingConfig(max_new_tokens=max_new_tokens), batch_size=1
    )
    # local runs always report the token ids (``or ()`` only for the type)
    return [
        Completion(c.prompt, c.completion, list(c.completion_token_ids or ())) for c in result.completions
    ]
