"""``eval`` as a library call: the reference (the adapter on its base, by our runtime, in float32 or
``dtype``), the base row and every variant run teacher-forced over the same token sequences, batch
by batch. KL per batch, streamed; no batch's logits outlive it.

One model in memory at a time: the first pass runs the reference's model, and scores against each
batch's reference logits every variant that shares that model (the base row, other adapters) or
holds none in this process (GGUF, endpoints). Variants with their own model (a merged folder,
a dtype, an MLX adapter run by mlx-lm) are loaded afterwards one by one, once the reference's model is released, and scored
against the reference's logits of the scored positions, which the first pass kept on disk
(:class:`RefCache`: positions x vocabulary values in the reference's dtype)."""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from adapterctl.core.eval.data import Sequence, read_records, tokenize_records
from adapterctl.core.eval.figures import Tally
from adapterctl.core.eval.report import EvalReport, Gate, VariantResult
from adapterctl.core.eval.scorers import (
    Scorer,
    about,
    adapter_scorer,
    dtype_scorer,
    model_scorer,
    vocab_size,
)
from adapterctl.core.eval.specs import VariantSpec, check_names
from adapterctl.core.runtime.session import AdapterChoice, Placement, base_hub, open_session
from adapterctl.errors import OutputIOError, UsageError
from adapterctl.io.hub.ref import HubOptions


@dataclass(frozen=True)
class EvalOptions:
    dtype: str = "float32"  # the reference's dtype (model variants run in it too)
    ctx: int = 512  # tokens per window of plain text; longest sequence otherwise
    batch_size: int = 8  # sequences per forward pass
    max_new_tokens: int = 32  # --prompts: greedy tokens the reference adds
    gate: Gate = field(default_factory=Gate)
    llama_cpp: str | None = None  # folder of llama.cpp's binaries (GGUF variants)
    gguf_base: str | None = None  # the base as GGUF, under GGUF LoRA variants
    mlx_python: str | None = None  # mlx-lm's Python (MLX variants); default $ADAPTERCTL_MLX_PYTHON


def run_eval(
    base_ref: str | None,
    adapter: AdapterChoice | list[AdapterChoice],
    variants: list[VariantSpec],
    *,
    data: str | None = None,
    prompts: list[tuple[str, str]] | None = None,
    options: EvalOptions = EvalOptions(),
    placement: Placement = Placement(),
    hub: HubOptions | None = None,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    endpoint_scorer: Callable[[VariantSpec, object, int], Scorer] | None = None,
) -> EvalReport:
    """Score every variant against the reference on ``data`` (a file) or on the reference's greedy
    continuations of ``prompts`` ((id, text) pairs). ``on_progress(done, total)`` counts tokens.
    Several adapters: the reference is their weighted sum (dtype variants take the first alone).
    ``endpoint_scorer(spec, tokenizer, vocab_size)`` scores endpoint variants (core/serve's, which
    eval cannot import: serve composes the capabilities); without it they are refused."""
    step = on_step or (lambda text: None)
    if (data is None) == (prompts is None):
        raise UsageError(
            "give either --data FILE or --prompts FILE", hint="adapterctl eval BASE -a ADAPTER --data FILE"
        )
    check_names(variants)
    check_engines(variants, options, endpoint_scorer is not None)
    records = read_records(data) if data is not None else None  # bad data fails before any loading
    placement = replace(placement, dtype=options.dtype)
    choices = adapter if isinstance(adapter, list) else [adapter]
    session = open_session(base_ref, choices, placement=placement, hub=hub, on_step=step)
    lb, attached = session.base, session.adapters[0]
    tokenizer = session.require_tokenizer("eval cannot tokenize its text")
    # several adapters (merge --eval): the reference is their weighted sum, as merged
    reference = Scorer("reference", lb.model, {a.name: a.weight for a in session.adapters})
    completions: tuple[dict, ...] = ()
    if records is not None:
        sequences = tokenize_records(records, tokenizer, options.ctx)
    else:
        assert prompts is not None  # exactly one of data and prompts (checked above)
        step(f"continuing {len(prompts)} prompt(s) greedily with the reference")
        sequences, completions = continue_greedily(reference, tokenizer, prompts, options.max_new_tokens)

    base_ref, sources, dtype, size = (
        session.base_ref,
        [a.source for a in session.adapters],
        lb.dtype,
        vocab_size(lb.model),
    )
    base_dir, adapter_dir, weight = lb.path, attached.folder, attached.weight
    own_model = partial(own_model_scorer, options=options, placement=placement, hub=hub, step=step,
                        tokenizer=tokenizer, size=size, base_dir=base_dir, adapter_dir=adapter_dir, weight=weight)  # fmt: skip
    deferred = {i: spec for i, spec in enumerate(variants, 1) if spec.kind in OWN_MODEL}
    scorers: list[Scorer | None] = [Scorer("base", lb.model, {})]
    for spec in variants:
        step(f"variant {spec.name}: {spec.kind} {spec.target}")
        scorers.append(
            None
            if spec.kind in OWN_MODEL
            else shared_scorer(spec, lb.model, options, tokenizer, weight, endpoint_scorer)
        )
    itemsize = next(p.element_size() for p in lb.model.parameters())  # the reference's logits' dtype
    need = sum(s.positions for s in sequences) * size * itemsize if deferred else 0
    with RefCache(bool(deferred), need) as cache:
        passes = Passes(sequences, options.batch_size, on_progress, 1 + len(deferred))
        ref_tally, tallies = passes.first(reference, scorers, cache)
        del session, lb, attached, reference  # the reference's model goes before another loads
        for scorer in scorers:
            if scorer is not None:
                scorer.close()
        for i, spec in deferred.items():
            gc.collect()
            scorers[i] = scorer = own_model(spec)
            try:
                passes.against(cache, scorer, tallies[i])
            finally:
                scorer.close()  # released before the next one loads
    gc.collect()
    positions = sum(s.positions for s in sequences)
    results = [
        result(s, t, options.gate, sequences if prompts is not None else None)
        for s, t in zip(scorers, tallies)
        if s is not None  # every one is set by now
    ]
    return EvalReport(
        base=base_ref,
        adapter=", ".join(sources),
        dtype=dtype,
        mode="data" if records is not None else "prompts",
        sequences=len(sequences),
        positions=positions,
        reference_perplexity=ref_tally.perplexity(),
        variants=tuple(results),
        gate=options.gate,
        completions=completions,
    )


def own_model_scorer(
    spec: VariantSpec,
    *,
    options: EvalOptions,
    placement: Placement,
    hub: HubOptions | None,
    step: Callable[[str], None],
    tokenizer,
    size: int,
    base_dir: Path,
    adapter_dir: Path,
    weight: float,
) -> Scorer:
    """A variant with its own model (merged folder, dtype, MLX), loaded when its turn comes."""

    def load(path: str, dtype: str):
        from adapterctl.core.runtime.model import load_base

        step(f"loading {path} ({dtype})")
        return load_base(path, replace(placement, dtype=dtype), hub=base_hub(hub))

    if spec.kind == "model":
        return model_scorer(spec, options.dtype, load, tokenizer, size)
    if spec.kind == "mlx":
        from adapterctl.core.eval.mlx import mlx_scorer

        with about(spec.name):
            return mlx_scorer(spec, options.mlx_python, base_dir, size)
    return dtype_scorer(spec, base_dir, adapter_dir, weight, load)


#: variant kinds with a model of their own (here, or mlx-lm's), run after the reference's pass
OWN_MODEL = ("model", "dtype", "mlx")


def shared_scorer(
    spec: VariantSpec, model, options: EvalOptions, tokenizer, weight: float, endpoint_scorer
) -> Scorer:
    """A variant scored in the reference's pass: an adapter on the reference's model, or one that
    another engine runs (GGUF by llama.cpp, an endpoint)."""
    if spec.kind == "adapter":
        return adapter_scorer(spec, model, weight)
    if spec.kind == "gguf":
        from adapterctl.core.eval.llama_cpp import gguf_scorer

        with about(spec.name):
            return gguf_scorer(spec, options.llama_cpp, options.gguf_base, tokenizer, vocab_size(model))
    assert spec.kind == "endpoint" and endpoint_scorer is not None  # check_engines refused the others
    return endpoint_scorer(spec, tokenizer, vocab_size(model))


class RefCache:
    """The reference's logits of each batch's scored positions, one file per batch in a temporary
    folder (removed on exit), for the variants scored after the reference's model is released.
    ``enabled=False``: nothing is kept (no variant needs it). ``need``: the bytes it will hold,
    checked against the free space of the temporary folder before the first pass."""

    def __init__(self, enabled: bool, need: int = 0):
        self.enabled, self.need = enabled, need
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> RefCache:
        if self.enabled:
            where = tempfile.gettempdir()
            free = shutil.disk_usage(where).free
            if self.need > free:
                raise OutputIOError(
                    f"eval keeps the reference's logits for the variants with a model of their own: "
                    f"{self.need / 1e9:.1f} GB in {where}, which has {free / 1e9:.1f} GB free",
                    hint="Point TMPDIR at a larger disk, or give less --data (fewer or shorter sequences).",
                )
            self._tmp = tempfile.TemporaryDirectory(prefix="adapterctl-eval-ref-")
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def put(self, batch: int, logits: torch.Tensor) -> None:
        if self._tmp is not None:
            path = Path(self._tmp.name) / f"{batch}.pt"
            try:
                torch.save(logits.detach().cpu().contiguous(), path)
            except (OSError, RuntimeError) as err:  # a full disk
                raise OutputIOError(
                    f"{path}: the reference's logits could not be kept ({err})",
                    hint="Point TMPDIR at a disk with more free space.",
                ) from err

    def get(self, batch: int) -> torch.Tensor:
        assert self._tmp is not None  # only variants scored after the first pass read it
        return torch.load(Path(self._tmp.name) / f"{batch}.pt", weights_only=True)


def check_engines(variants: list[VariantSpec], options: EvalOptions, endpoints: bool = False) -> None:
    """Variants run by another engine: refused, before anything loads, where this build cannot run them
    or the engine is not found."""
    from adapterctl.core.eval.llama_cpp import find_tool
    from adapterctl.errors import UnsupportedError

    for spec in variants:
        if spec.kind == "gguf":
            with about(spec.name):
                find_tool(options.llama_cpp)
        if spec.kind == "mlx":
            from adapterctl.core.eval.mlx import find_mlx_python

            with about(spec.name):
                find_mlx_python(options.mlx_python)
        if spec.kind == "endpoint" and not endpoints:
            raise UnsupportedError(
                f"variant {spec.name!r}: {spec.kind} variants are not supported by eval yet",
                hint="Convert it back to a PEFT adapter (adapterctl convert --from ...) and pass that folder.",
            )


def continue_greedily(
    reference: Scorer, tokenizer, prompts: list[tuple[str, str]], max_new_tokens: int
) -> tuple[list[Sequence], tuple[dict, ...]]:
    """The reference's greedy continuation of each prompt (one row each: no padding effects); the
    generated tokens are the ones scored."""
    from adapterctl.core.runtime.attach import set_active

    assert reference.active is not None  # the reference always names its adapters
    set_active(reference.model, reference.active)
    model, sequences, completions = reference.model, [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for pid, text in prompts:
        ids = list(tokenizer(text)["input_ids"])
        if not ids:
            raise UsageError(f"prompt {pid!r} has no tokens", hint="Give a non-empty prompt.")
        x = torch.tensor([ids], device=_device(model))
        with torch.inference_mode():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[0, len(ids) :].tolist()
        if new:
            sequences.append(Sequence(tuple(ids + new), len(ids), pid))
        completions.append(
            {"id": pid, "prompt": text, "completion": tokenizer.decode(new), "tokens": len(new)}
        )
    if not sequences:
        raise UsageError("the reference generated no token for any prompt", hint="Raise --max-new-tokens.")
    return sequences, tuple(completions)


def _device(model) -> torch.device:
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def batches(sequences: list[Sequence], size: int):
    """(indices, ids, mask) per batch: sequences sorted by length (less padding), right-padded."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].ids))
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        width = len(sequences[idx[0]].ids)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(sequences[i].ids)
            ids[row, :n] = torch.tensor(sequences[i].ids)
            mask[row, :n] = 1
        yield idx, ids, mask


@dataclass
class Passes:
    """Teacher-forced passes over the same batches: the reference's pass (with every variant that
    shares its model or holds none here), then one per variant with its own model."""

    sequences: list[Sequence]
    batch_size: int
    on_progress: Callable[[int, int], None] | None = None
    count: int = 1  # passes in all (progress counts tokens of every pass)
    done: int = 0

    def first(self, reference: Scorer, scorers: list[Scorer | None], cache: RefCache):
        """The reference's figures; every non-None scorer's tally (all of them, by index)."""
        ref_tally, tallies = Tally(), [Tally() for _ in scorers]
        for b, (idx, ids, mask, at) in enumerate(self._batches()):
            ref = reference.logits(ids, mask)[at]
            cache.put(b, ref)
            ref_tally.add_nll(ref, ids[at[0], at[1] + 1])
            for scorer, tally in zip(scorers, tallies):
                if scorer is not None:
                    self._score(scorer, tally, ref, (idx, ids, mask, at))
            self._advance(mask)
        return ref_tally, tallies

    def against(self, cache: RefCache, scorer: Scorer, tally: Tally) -> None:
        """One variant against the reference's logits the first pass kept."""
        for b, (idx, ids, mask, at) in enumerate(self._batches()):
            self._score(scorer, tally, cache.get(b), (idx, ids, mask, at))
            self._advance(mask)

    def _batches(self):
        for idx, ids, mask in batches(self.sequences, max(1, self.batch_size)):
            rows, cols = [], []
            for row, i in enumerate(idx):  # position t predicts token t + 1
                seq = self.sequences[i]
                cols += range(seq.scored_from - 1, len(seq.ids) - 1)
                rows += [row] * seq.positions
            yield idx, ids, mask, (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))

    def _score(self, scorer: Scorer, tally: Tally, ref: torch.Tensor, batch: tuple) -> None:
        idx, ids, mask, at = batch  # as _batches() yields them
        logits = scorer.complete(ref, scorer.logits(ids, mask)[at].to(ref.device))
        agree = tally.add(ref, logits, ids[at[0], at[1] + 1])
        start = 0
        for i in idx:
            n = self.sequences[i].positions
            wrong = (~agree[start : start + n]).nonzero()
            tally.divergence.append((i, int(wrong[0]) if len(wrong) else None))
            start += n

    def _advance(self, mask: torch.Tensor) -> None:
        self.done += int(mask.sum())
        if self.on_progress:
            self.on_progress(self.done, self.count * sum(len(s.ids) for s in self.sequences))


def result(scorer: Scorer, tally: Tally, gate: Gate, sequences: list[Sequence] | None) -> VariantResult:
    f = tally.figures()
    spec = scorer.spec
    base = spec is None
    failures = () if base else tuple(gate.failures(f.kl_mean, f.top1_agreement))
    divergence = None
    if sequences is not None:
        divergence = tuple(
            {"prompt": sequences[i].id, "token": k} for i, k in sorted(tally.divergence, key=lambda d: d[0])
        )
    return VariantResult(
        name=scorer.name,
        kind="base" if base else spec.kind,
        spec="" if base else spec.to_dict()["spec"],
        positions=f.positions,
        kl_mean=f.kl_mean,
        kl_p99=f.kl_p99,
        kl_max=f.kl_max,
        top1_agreement=f.top1_agreement,
        perplexity=f.perplexity,
        passed=None if base else not failures,
        failures=failures,
        first_divergence=divergence,
        kl_method=scorer.kl_method,
        notes=tuple(scorer.notes),
    )
