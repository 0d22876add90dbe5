"""``eval`` as a library call: the reference (the adapter on its base, by our runtime, in float32 or
``dtype``), the base row and every variant run teacher-forced over the same token sequences, batch
by batch. Each batch's reference log-probabilities are computed once and every variant is scored
against them before the next batch: KL per batch, streamed; no batch's logits outlive it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from adapterctl.core.eval.data import Sequence, read_records, tokenize_records
from adapterctl.core.eval.figures import Tally
from adapterctl.core.eval.report import EvalReport, Gate, VariantResult
from adapterctl.core.eval.scorers import Scorer, about, adapter_scorer, dtype_scorer, model_scorer, vocab_size
from adapterctl.core.eval.specs import VariantSpec, check_names
from adapterctl.core.runtime.session import AdapterChoice, Placement, base_hub, open_session
from adapterctl.errors import UsageError
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

    def load(path: str, dtype: str):
        from adapterctl.core.runtime.model import load_base

        step(f"loading {path} ({dtype})")
        return load_base(path, replace(placement, dtype=dtype), hub=base_hub(hub))

    scorers = [Scorer("base", lb.model, {})]
    for spec in variants:
        step(f"variant {spec.name}: {spec.kind} {spec.target}")
        if spec.kind == "adapter":
            scorers.append(adapter_scorer(spec, lb.model, attached.weight))
        elif spec.kind == "model":
            scorers.append(model_scorer(spec, options.dtype, load, tokenizer, vocab_size(lb.model)))
        elif spec.kind == "dtype":
            scorers.append(dtype_scorer(spec, lb.path, attached.folder, attached.weight, load))
        elif spec.kind == "gguf":
            from adapterctl.core.eval.llama_cpp import gguf_scorer

            with about(spec.name):
                gguf = gguf_scorer(
                    spec, options.llama_cpp, options.gguf_base, tokenizer, vocab_size(lb.model)
                )
            scorers.append(gguf)
        elif spec.kind == "endpoint":
            assert endpoint_scorer is not None  # check_engines refused endpoint variants without it
            scorers.append(endpoint_scorer(spec, tokenizer, vocab_size(lb.model)))
    ref_tally, tallies = score(reference, scorers, sequences, tokenizer, options.batch_size, on_progress)
    positions = sum(s.positions for s in sequences)
    results = [
        result(s, t, options.gate, sequences if prompts is not None else None)
        for s, t in zip(scorers, tallies)
    ]
    return EvalReport(
        base=session.base_ref,
        adapter=", ".join(a.source for a in session.adapters),
        dtype=lb.dtype,
        mode="data" if records is not None else "prompts",
        sequences=len(sequences),
        positions=positions,
        reference_perplexity=ref_tally.perplexity(),
        variants=tuple(results),
        gate=options.gate,
        completions=completions,
    )


def check_engines(variants: list[VariantSpec], options: EvalOptions, endpoints: bool = False) -> None:
    """Variants run by another engine: refused, before anything loads, where this build cannot run them
    or the engine is not found."""
    from adapterctl.core.eval.llama_cpp import find_tool
    from adapterctl.errors import UnsupportedError

    for spec in variants:
        if spec.kind == "gguf":
            with about(spec.name):
                find_tool(options.llama_cpp)
        if spec.kind == "mlx" or (spec.kind == "endpoint" and not endpoints):
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


def score(reference: Scorer, scorers: list[Scorer], sequences, tokenizer, batch_size: int, on_progress=None):
    """Teacher-forced figures of every scorer against the reference, streamed batch by batch."""
    ref_tally, tallies = Tally(), [Tally() for _ in scorers]
    total, done = sum(len(s.ids) for s in sequences), 0
    for idx, ids, mask in batches(sequences, max(1, batch_size)):
        rows, cols = [], []
        for row, i in enumerate(idx):  # position t predicts token t + 1
            seq = sequences[i]
            cols += range(seq.scored_from - 1, len(seq.ids) - 1)
            rows += [row] * seq.positions
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        targets = ids[rows_t, cols_t + 1]
        ref = reference.logits(ids, mask)[rows_t, cols_t]
        ref_tally.add_nll(ref, targets)
        for scorer, tally in zip(scorers, tallies):
            logits = scorer.complete(ref, scorer.logits(ids, mask)[rows_t, cols_t].to(ref.device))
            agree = tally.add(ref, logits, targets)
            start = 0
            for i in idx:
                n = sequences[i].positions
                wrong = (~agree[start : start + n]).nonzero()
                tally.divergence.append((i, int(wrong[0]) if len(wrong) else None))
                start += n
            del logits
        done += int(mask.sum())
        if on_progress:
            on_progress(done, total)
    return ref_tally, tallies


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
