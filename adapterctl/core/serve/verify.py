"""``adapterctl verify``: does a server serve each adapter as trained? The served adapters'
greedy completions against adapterctl's own reference (our engine on the local base), per adapter:

- ``matches``: the same tokens for every prompt (and, where the server gives logprobs, their
  largest difference over those tokens);
- ``no-op``: the server's tokens are the base model's (the adapter changed nothing there: not
  loaded, skipped modules, a name pointing at the base);
- ``differs``: neither; the first divergent token is shown (prompt, position, ours vs served).

Token ids are compared where the server returns them (vLLM's ``return_token_ids``), the text
otherwise. Greedy decoding on both sides; compare in the dtype the server runs (``--dtype``):
numerics of another dtype can flip a near-tie and show up as ``differs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapterctl.core.generate.prompts import PromptSpec
from adapterctl.core.generate.results import Completion, DecodingConfig, GenerationResult

MATCHES, DIFFERS, NO_OP = "matches", "differs", "no-op"
VERDICT_TEXT = {
    MATCHES: "matches",
    DIFFERS: "differs from the trained adapter",
    NO_OP: "is a no-op (the server's output is the base model's)",
}
#: prompts ``verify`` uses without --prompts: short, varied, any tokenizer
DEFAULT_PROMPTS = (
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "Hello, my name is",
    "at night,",
)


@dataclass(frozen=True)
class Divergence:
    prompt_id: str
    position: int  # index of the first differing token (or character, text-only servers)
    ours: str  # the token (or text from there on) ours made
    served: str
    ours_id: int | None = None
    served_id: int | None = None

    def to_dict(self) -> dict:
        return {
            "prompt_id": self.prompt_id,
            "position": self.position,
            "ours": self.ours,
            "served": self.served,
            "ours_id": self.ours_id,
            "served_id": self.served_id,
        }

    def describe(self) -> str:
        ids = (
            f" (token {self.ours_id} vs {self.served_id})"
            if self.ours_id is not None and self.served_id is not None
            else ""
        )
        return (
            f"prompt {self.prompt_id!r}, token {self.position}: ours {self.ours!r}, "
            f"served {self.served!r}{ids}"
        )


@dataclass(frozen=True)
class AdapterVerdict:
    name: str  # served name
    adapter: str  # the local adapter it is checked against
    verdict: str
    prompts: int
    compared: str  # "token ids" | "text"
    first_divergence: Divergence | None = None
    max_logprob_diff: float | None = None
    #: KL(ours || served) on our greedy completions, where the server returns prompt_logprobs
    #: (eval's figures: kl_mean, kl_max, top1_agreement, kl_method, positions); else why not
    kl: dict | None = None
    kl_note: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == MATCHES

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "verdict": self.verdict,
            "says": VERDICT_TEXT[self.verdict],
            "prompts": self.prompts,
            "compared": self.compared,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "max_logprob_diff": self.max_logprob_diff,
            "kl": self.kl,
            "kl_note": self.kl_note,
        }


@dataclass(frozen=True)
class VerifyReport:
    endpoint: str
    base: str
    results: list[AdapterVerdict] = field(default_factory=list)
    max_new_tokens: int = 16

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_dict(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "base": self.base,
            "max_new_tokens": self.max_new_tokens,
            "results": [r.to_dict() for r in self.results],
        }


def _same(ours: Completion, served: Completion, by_ids: bool) -> bool:
    if by_ids:
        return tuple(ours.completion_token_ids or ()) == tuple(served.completion_token_ids or ())
    return ours.completion == served.completion


def first_divergence(
    ours: Completion, served: Completion, by_ids: bool, decode: Callable[[list[int]], str]
) -> Divergence:
    if by_ids:
        a, b = list(ours.completion_token_ids or ()), list(served.completion_token_ids or ())
        i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return Divergence(
            ours.id,
            i,
            decode(a[i : i + 1]) if i < len(a) else "<end>",
            decode(b[i : i + 1]) if i < len(b) else "<end>",
            a[i] if i < len(a) else None,
            b[i] if i < len(b) else None,
        )
    x, y = ours.completion, served.completion
    i = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return Divergence(ours.id, i, x[i : i + 12] or "<end>", y[i : i + 12] or "<end>")


def max_logprob_diff(pairs: Sequence[tuple[Completion, Completion]]) -> float | None:
    """Largest |ours - served| log-probability over the tokens both made (same prefix)."""
    diffs = []
    for ours, served in pairs:
        if ours.logprobs is None or served.logprobs is None:
            continue
        a, b = ours.completion_token_ids or (), served.completion_token_ids or ()
        for k, (x, y) in enumerate(zip(ours.logprobs, served.logprobs)):
            if k >= len(a) or k >= len(b) or a[k] != b[k]:
                break
            diffs.append(abs(x - y))
    return round(max(diffs), 6) if diffs else None


def judge(
    name: str,
    adapter: str,
    ours: Sequence[Completion],
    base: Sequence[Completion],
    served: Sequence[Completion],
    decode: Callable[[list[int]], str],
) -> AdapterVerdict:
    """One served adapter's verdict. ``ours``/``base``/``served``: completions of the same
    prompts, in the same order (our engine with the adapter, our engine on the base alone, the
    server under ``name``)."""
    by_ids = all(s.completion_token_ids is not None for s in served)
    pairs = list(zip(ours, served))
    how = "token ids" if by_ids else "text"
    lp = max_logprob_diff(pairs) if by_ids else None
    bad = [(o, s) for o, s in pairs if not _same(o, s, by_ids)]
    if not bad:
        return AdapterVerdict(name, adapter, MATCHES, len(pairs), how, None, lp)
    div = first_divergence(*bad[0], by_ids, decode)
    if all(_same(b, s, by_ids) for b, s in zip(base, served)):
        return AdapterVerdict(name, adapter, NO_OP, len(pairs), how, div, lp)
    return AdapterVerdict(name, adapter, DIFFERS, len(pairs), how, div, lp)


def verify_specs(specs: Sequence[PromptSpec]) -> list[PromptSpec]:
    """Every prompt runs on every adapter: a prompts file's own ``adapter`` fields do not apply."""
    return [PromptSpec(s.id, s.prompt, None, s.max_new_tokens) for s in specs]


def greedy(max_new_tokens: int) -> DecodingConfig:
    return DecodingConfig(max_new_tokens=max_new_tokens, logprobs=True)


def verdicts(
    names: Sequence[tuple[str, str]],
    reference: Sequence[GenerationResult],
    served: GenerationResult,
    decode: Callable[[list[int]], str],
) -> list[AdapterVerdict]:
    """``names``: (served name, local adapter) in order; ``reference``: our base run, then one
    run per adapter in that order; ``served``: the server's completions, all adapters mixed."""
    base = list(reference[0].completions)
    out = []
    for (name, adapter), ours in zip(names, reference[1:]):
        mine = [c for c in served.completions if c.adapter == name]
        out.append(judge(name, adapter, list(ours.completions), base, mine, decode))
    return out


def run_verify(
    opts,
    pairs: Sequence[tuple[str, str]],
    specs: Sequence[PromptSpec],
    *,
    base_ref: str | None = None,
    model: str | None = None,
    max_new_tokens: int = 16,
    placement=None,
    hub=None,
    concurrency: int = 8,
    on_step: Callable[[str], None] | None = None,
) -> VerifyReport:
    """``pairs``: (served name, local adapter). The server is asked first (a server that is not
    there fails in a second, not after loading the base), then our engine runs the reference:
    the base alone and each adapter alone, greedy, in the given placement."""
    from adapterctl.core.generate.run import open_generation, run_generation
    from adapterctl.core.runtime.session import AdapterChoice, Placement
    from adapterctl.core.serve.client import Client
    from adapterctl.core.serve.endpoint import EndpointRun, list_models, resolve_names
    from adapterctl.errors import EndpointError

    step = on_step or (lambda text: None)
    cfg = greedy(max_new_tokens)
    specs = verify_specs(specs)
    client = Client(opts)
    names = [n for n, _ in pairs]
    served_names = resolve_names(list_models(client), client.root, model, base_ref, names)
    step(f"asking {client.root} for {len(specs)} prompt(s) x {len(names)} adapter(s)")
    pinned = [PromptSpec(s.id, s.prompt, n, s.max_new_tokens) for n in names for s in specs]
    (served,) = EndpointRun(client, served_names, concurrency).generate(pinned, cfg)
    if served.error is not None:
        raise served.error
    if len(served.completions) != len(pinned):
        raise EndpointError(
            f"{client.root}: {len(pinned) - len(served.completions)} request(s) got no answer"
        )
    step("running the reference (adapterctl's engine on the local base)")
    gen = open_generation(
        base_ref,
        [AdapterChoice(ref, name=n) for n, ref in pairs],
        specs,
        placement=placement or Placement(),
        hub=hub,
        on_step=step,
    )
    report = run_generation(gen, specs, cfg, compare=True)
    tok = gen.session.require_tokenizer("it cannot decode the completions")  # open_generation checked
    results = verdicts(pairs, report.results, served, lambda ids: tok.decode(ids, skip_special_tokens=False))
    step("asking for the served adapters' prompt_logprobs of our completions (KL)")
    model, slots = gen.session.base.model, [a.name for a in gen.session.adapters]
    results = [
        with_kl(r, client, served_names.adapters.get(n, n), (model, slot), ours, tok)
        for r, n, slot, ours in zip(results, names, slots, report.results[1:])
    ]
    return VerifyReport(client.root, report.base, results, max_new_tokens)


def with_kl(
    verdict: AdapterVerdict, client, served: str, slot: tuple, ours: GenerationResult, tok
) -> AdapterVerdict:
    """The verdict with eval's KL of the served adapter against ours on our own greedy completions
    (teacher-forced), or the reason there is none (the server gives no prompt_logprobs)."""
    from dataclasses import replace

    from adapterctl.core.eval.data import Sequence as Seq
    from adapterctl.core.eval.scorers import vocab_size
    from adapterctl.core.serve.eval_endpoint import served_kl
    from adapterctl.errors import AdapterctlError, Interrupted

    seqs = []
    for c in ours.completions:
        prompt = list(tok(c.prompt)["input_ids"])
        new = list(c.completion_token_ids or ())
        if prompt and new:
            seqs.append(Seq(tuple(prompt + new), len(prompt), c.id))
    if not seqs:
        return replace(verdict, kl_note="no completion tokens to score")
    try:
        model, name = slot  # our model and the adapter's name on it
        kl = served_kl(client, served, model, {name: 1.0}, seqs, vocab_size(model))
    except Interrupted:
        raise
    except AdapterctlError as err:  # the token verdicts stand; the KL is a note
        return replace(verdict, kl_note=f"no KL: {err.message}")
    return replace(verdict, kl=kl)
