"""``generate`` as a library call: open a generation (the one loader, :mod:`adapterctl.core.runtime.session`, plus
the adapters a prompts file names and a router for rows), run it (once, or once per variant with
``compare``), and get a :class:`GenerateReport`, the command's JSON document.

Nothing here prints: streamed text and finished completions go to the caller's ``on_token`` and
``on_complete``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapterctl.core.generate.decoding import DecodingConfig
from adapterctl.core.generate.loop import (
    BaseRouter,
    Completion,
    GenerationResult,
    Router,
    compare_completions,
    generate_completions,
)
from adapterctl.core.generate.prompts import BASE_KEY, DEFAULT_KEY, PromptSpec
from adapterctl.core.generate.routing import EngineRouter
from adapterctl.core.runtime.session import (
    AdapterChoice,
    Placement,
    Session,
    adapter_names,
    open_session,
)
from adapterctl.io.hub.ref import HubOptions


@dataclass
class Generation:
    """A loaded base with its adapters, ready to generate: ``router`` sends each row through its
    adapters, ``variants`` are the row keys of each command-line adapter alone (``compare``)."""

    session: Session
    router: Router
    variants: list[str]

    @property
    def base(self) -> str:
        return self.session.base_ref


def prompt_adapters(choices: Sequence[AdapterChoice], specs: Sequence[PromptSpec]) -> list[str]:
    """Adapters that prompts name (JSONL ``adapter``) by path or Hub id, beyond ``choices``: each
    is attached too, at weight 1. A prompt may name a chosen adapter by its name, by what was
    typed for it, or by the same folder."""
    refs = [c.ref for c in choices]
    known = set(refs) | set(adapter_names(refs, [c.name for c in choices]))
    known |= {_local(r) for r in refs} - {None}
    extra: list[str] = []
    for spec in specs:
        ref = spec.adapter
        if ref in (DEFAULT_KEY, BASE_KEY) or ref in known or _local(ref) in known:
            continue
        extra.append(ref)
        known.add(ref)
    return extra


def _local(ref: str) -> str | None:
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else None


def is_quantized(base) -> bool:
    if getattr(base, "quantize", None):
        return True
    return getattr(getattr(base.model, "config", None), "quantization_config", None) is not None


def open_generation(
    base_ref: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec] = (),
    *,
    placement: Placement = Placement(),
    hub: HubOptions | None = None,
    fold: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> Generation:
    """Load the base (default: the first adapter's ``base_model_name_or_path``) with the chosen
    adapters and those the prompts name. ``fold``: fold one adapter (or one combination) into
    the weights for a run where that is exact (never on a quantized base) and the run is long
    enough to pay for it (``routing.fold_pays``)."""
    choices = list(choices)
    more = [AdapterChoice(ref) for ref in prompt_adapters(choices, specs)]
    session = open_session(base_ref, choices + more, placement=placement, hub=hub, on_step=on_step)
    session.require_tokenizer("it cannot generate")
    chosen = session.adapters[: len(choices)]
    if not session.adapters:
        return Generation(session, BaseRouter(), [])
    router = EngineRouter(
        session.base.model,
        session.adapters,
        {a.name: a.weight for a in chosen},
        can_fold=fold and not is_quantized(session.base),
        auto_fold=True,
    )
    return Generation(session, router, [router.label_alone(a.name) for a in chosen])


class ReportedAdapter(Protocol):
    """An adapter as a report lists it: attached here (``AttachedAdapter``) or served by another
    process (``core.serve``'s ``ServedRef``)."""

    @property
    def name(self) -> str: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class GenerateReport:
    """What ``generate`` made: the base, the adapters, one result per run (one, or one per
    variant with ``compare``: the base first, then each command-line adapter alone)."""

    base: str
    adapters: tuple[ReportedAdapter, ...]
    results: tuple[GenerationResult, ...]
    compare: bool = False
    variants: tuple[str, ...] = ()  # the adapter label of each compared variant after the base

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.results)

    def compare_rows(self) -> list[dict]:
        """Per prompt: its id, text and the completion of every variant (base first)."""
        rows: dict[str, dict] = {}
        for r in self.results:
            for c in r.completions:
                row = rows.setdefault(c.id, {"id": c.id, "prompt": c.prompt, "completions": []})
                row["completions"].append(c.to_dict())
        return list(rows.values())

    def to_dict(self) -> dict:
        results = self.results
        doc = {"base": self.base, "adapters": [a.to_dict() for a in self.adapters], **results[0].to_dict()}
        if self.compare:
            doc.update(
                mode=[r.mode for r in results],
                interrupted=self.interrupted,
                elapsed_s=round(sum(r.elapsed_s for r in results), 3),
                warnings=sorted({w for r in results for w in r.warnings}),
                completions=[c.to_dict() for r in results for c in r.completions],
                compare=self.compare_rows(),
            )
            doc.pop("tokens_per_second")
        return doc


def run_generation(
    gen: Generation,
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    compare: bool = False,
    batch_size: int = 8,
    chat: bool = False,
    system: str | None = None,
    on_token: Callable[[PromptSpec, str], None] | None = None,
    on_complete: Callable[[Completion], None] | None = None,
) -> GenerateReport:
    """Complete every prompt (Ctrl-C ends early: the report says ``interrupted``). ``compare``:
    once on the base and once per command-line adapter alone, side by side."""
    model, tokenizer = gen.session.base.model, gen.session.base.tokenizer
    kw = {
        "batch_size": batch_size,
        "chat": chat,
        "system": system,
        "on_token": on_token,
        "on_complete": on_complete,
    }
    if compare:
        results = compare_completions(
            model, tokenizer, list(specs), cfg, gen.router, [BASE_KEY, *gen.variants], **kw
        )
    else:
        results = [generate_completions(model, tokenizer, list(specs), cfg, router=gen.router, **kw)]
    return GenerateReport(gen.base, tuple(gen.session.adapters), tuple(results), compare, tuple(gen.variants))
