"""Batched text generation with a KV cache: left padding, per-row finish, stop strings, streaming.

Our own decode loop rather than ``model.generate``: it is leaner per step (no logits-processor
list, one sync per step), lets every row finish on its own terms (EOS, stop string, its own
``max_new_tokens``), streams text as it is made, and keeps what was generated when Ctrl-C
arrives. Which adapter each row goes through is the router's business
(:mod:`adapterctl.core.generate.routing`): this module only asks it for a context per run and per batch.

Left padding follows transformers' batched generation: pad tokens are masked out of attention and
position ids count real tokens only (``cumsum(mask) - 1``), so a padded row computes what it would
compute alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from adapterctl.core.generate.decoding import DecodingConfig, TokenChooser, mark_seen
from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec
from adapterctl.core.generate.results import Completion, GenerationResult
from adapterctl.core.generate.tokens import TokenPlan, encode_prompts, special_ids


class Router(Protocol):
    """Routes rows through adapters. ``key_for`` gives a row's adapter key (BASE_KEY, an adapter
    name or a combination label); ``run(keys, steps)`` wraps the whole run (e.g. folding one
    adapter into the weights; ``steps``: the decode steps the run may take at most), ``batch(keys)``
    each forward-pass batch (e.g. per-row adapters)."""

    mode: str

    def key_for(self, spec: PromptSpec) -> str: ...

    def run(self, keys: list[str], steps: int | None = None) -> ContextManager: ...

    def batch(self, keys: list[str]) -> ContextManager: ...


class BaseRouter:
    """No adapters: every row runs on the base model."""

    mode = "base"

    def key_for(self, spec: PromptSpec) -> str:
        from adapterctl.errors import UsageError

        if spec.adapter not in (None, BASE_KEY):
            raise UsageError(
                f"prompt {spec.id!r} names adapter {spec.adapter!r} but no adapters are loaded",
                hint="Pass it with --adapter.",
            )
        return BASE_KEY

    def run(self, keys: list[str], steps: int | None = None) -> ContextManager:
        return contextlib.nullcontext()

    def batch(self, keys: list[str]) -> ContextManager:
        return contextlib.nullcontext()


OnToken = Callable[[PromptSpec, str], None]
OnComplete = Callable[[Completion], None]


@dataclass
class _Row:
    """Mutable per-row decoding state (internal)."""

    plan: TokenPlan
    key: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    streamed: int = 0  # characters of ``text`` already handed to on_token
    finish: str | None = None
    done: Completion | None = None


def generate_completions(
    model,
    tokenizer,
    specs: list[PromptSpec],
    cfg: DecodingConfig,
    *,
    router: Router | None = None,
    batch_size: int = 8,
    chat: bool = False,
    system: str | None = None,
    on_token: OnToken | None = None,
    on_complete: OnComplete | None = None,
    chooser: TokenChooser | None = None,
) -> GenerationResult:
    """Complete every prompt; batches of ``batch_size`` rows in prompt order, one forward pass per
    step for the whole batch whatever adapters its rows name. Ctrl-C ends the run early with
    ``interrupted=True``: finished rows are kept, rows in flight end with reason "interrupted"."""
    from adapterctl.errors import UsageError

    cfg.check()
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    router = router or BaseRouter()
    plans, warnings = encode_prompts(model, tokenizer, specs, cfg.max_new_tokens, chat, system)
    rows = [_Row(p, router.key_for(p.spec)) for p in plans]
    chooser = chooser or TokenChooser(cfg, _input_device(model))
    decoder = _Decoder(model, tokenizer, cfg, chooser, on_token, on_complete)
    start, interrupted, current = time.perf_counter(), False, []
    try:
        with router.run([r.key for r in rows], _steps(rows, batch_size)), torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                current = rows[i : i + batch_size]
                with router.batch([r.key for r in current]):
                    decoder.run_batch(current)
    except KeyboardInterrupt:
        interrupted = True
        for r in current:
            if r.done is None:
                decoder.finish(r, "interrupted", time.perf_counter(), decoder.t0)
    done = tuple(r.done for r in rows if r.done is not None)
    return GenerationResult(
        done, interrupted, chooser.seed, router.mode, time.perf_counter() - start, tuple(warnings)
    )


def _steps(rows: list[_Row], batch_size: int) -> int:
    """Forward passes after the prefill, at most: each batch steps until its longest row is done."""
    return sum(
        max(r.plan.max_new_tokens for r in rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)
    )


class _Decoder:
    """The KV-cached decode loop for one batch, plus per-row text bookkeeping."""

    def __init__(
        self,
        model,
        tokenizer,
        cfg: DecodingConfig,
        chooser: TokenChooser,
        on_token: OnToken | None,
        on_complete: OnComplete | None,
    ) -> None:
        self.model, self.tokenizer, self.cfg, self.chooser = model, tokenizer, cfg, chooser
        self.on_token, self.on_complete = on_token, on_complete
        self.eos, self.pad = special_ids(model, tokenizer)
        self.track_text = bool(cfg.stop) or on_token is not None
        self.device = _input_device(model)
        self.keep_last = _accepts_logits_to_keep(model)
        self.cache_kw = _cache_keyword(model)
        self.t0 = time.perf_counter()  # start of the batch in flight

    def run_batch(self, rows: list[_Row]) -> None:
        self.t0 = t0 = time.perf_counter()
        ids, mask = _left_pad([r.plan.ids for r in rows], self.pad, self.device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = _new_cache(self.model)
        logits = self._forward(ids, mask, positions, cache)
        seen = self._seen_mask(rows, logits.shape[-1])
        for _ in range(max(r.plan.max_new_tokens for r in rows)):
            tokens, logprobs = self.chooser.choose(logits.float(), seen)
            self._take(rows, tokens.tolist(), logprobs.tolist() if logprobs is not None else None, t0)
            live = [r.done is None for r in rows]
            if not any(live):
                return
            if seen is not None:
                mark_seen(seen, tokens)
            # finished rows keep stepping on a pad token (their output is ignored), so the batch
            # keeps one shape and one cache
            tokens = tokens.masked_fill(~torch.tensor(live, device=tokens.device), self.pad)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(tokens[:, None], mask, positions, cache)

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        kw = {"logits_to_keep": 1} if self.keep_last else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_kw: cache},
            **kw,
        )
        return out.logits[:, -1]

    def _seen_mask(self, rows: list[_Row], vocab: int) -> torch.Tensor | None:
        if self.cfg.repetition_penalty in (None, 1.0):
            return None
        seen = torch.zeros((len(rows), vocab), dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            seen[i, torch.tensor(r.plan.ids, device=self.device)] = True
        return seen

    def _take(self, rows: list[_Row], tokens: list[int], logprobs: list[float] | None, t0: float) -> None:
        now = time.perf_counter()
        for i, r in enumerate(rows):
            if r.done is not None:
                continue
            r.tokens.append(tokens[i])
            if logprobs is not None:
                r.logprobs.append(logprobs[i])
            reason = self._finish_reason(r)
            if reason is not None:
                self.finish(r, reason, now, t0)
            elif self.on_token is not None:
                self._stream(r, final=False)

    def _finish_reason(self, r: _Row) -> str | None:
        if r.tokens[-1] in self.eos:
            return "eos"
        if self.track_text:
            r.text = self._decode(r.tokens)
            cut = _find_stop(r.text, self.cfg.stop)
            if cut is not None:
                r.text = r.text[:cut]
                return "stop"
        if len(r.tokens) >= r.plan.max_new_tokens:
            return "length"
        return None

    def finish(self, r: _Row, reason: str, now: float, t0: float) -> None:
        r.finish = reason
        if reason != "stop":
            r.text = self._decode(r.tokens)
        if self.on_token is not None:
            self._stream(r, final=True)
        spec = r.plan.spec
        r.done = Completion(
            id=spec.id,
            prompt=spec.prompt,
            adapter=None if r.key == BASE_KEY else r.key,
            completion=r.text,
            completion_token_ids=tuple(r.tokens),
            finish_reason=reason,
            prompt_tokens=len(r.plan.ids),
            tokens_per_second=len(r.tokens) / max(now - t0, 1e-9),
            logprobs=tuple(r.logprobs) if self.cfg.logprobs else None,
        )
        if self.on_complete is not None:
            self.on_complete(r.done)

    def _stream(self, r: _Row, final: bool) -> None:
        """Hand on the text that can no longer change: hold back an incomplete UTF-8 character
        (decoded as U+FFFD) and any tail that could still grow into a stop string."""
        end = len(r.text) if final else _stable_prefix(r.text, self.cfg.stop)
        if end > r.streamed and self.on_token is not None:  # called only with an on_token
            self.on_token(r.plan.spec, r.text[r.streamed : end])
            r.streamed = end

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stable_prefix(text: str, stops: tuple[str, ...]) -> int:
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:  # the longest tail of text that starts a stop string
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                end = min(end, len(text) - n)
                break
    return end


def _left_pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _input_device(model) -> torch.device:
    """Where input ids go: the embedding's execution device (its accelerate hook's when it is
    offloaded to cpu/disk, whose weight then sits on the meta device)."""
    from adapterctl.core.runtime.layers import execution_device

    return execution_device(model.get_input_embeddings())


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _cache_keyword(model) -> str:
    """The KV cache's keyword: ``cache`` where transformers renamed it (5.2x deprecates
    ``past_key_values`` with a FutureWarning on every step), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def compare_completions(
    model, tokenizer, specs: list[PromptSpec], cfg: DecodingConfig, router: Router, variants: list[str], **kw
) -> list[GenerationResult]:
    """The same prompts once per variant (BASE_KEY or an adapter name), one homogeneous run each
    (so each is folded when it can be). Every variant restarts the seeded random stream, so
    sampled runs differ only by the adapter. Stops after an interrupted variant."""
    chooser = TokenChooser(cfg, _input_device(model))
    results = []
    for variant in variants:
        chooser.reset()
        pinned = [PromptSpec(s.id, s.prompt, variant, s.max_new_tokens) for s in specs]
        results.append(
            generate_completions(model, tokenizer, pinned, cfg, router=router, chooser=chooser, **kw)
        )
        if results[-1].interrupted:
            break
    return results
