"""A run on an engine other than ours (vLLM's offline engine, vLLM replicas on Ray): its
adapters and base resolved before any engine starts, its jobs, and ``generate``'s report of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.core.adapter.base_info import default_base
from adapterctl.core.engine_rules.limits import PreparedAdapter
from adapterctl.core.generate.jobs import Job, check_one_adapter_per_request, plan_jobs
from adapterctl.core.generate.prompts import PromptSpec, adapter_lookup
from adapterctl.core.generate.results import GenerationResult
from adapterctl.core.runtime.session import AdapterChoice, adapter_names, base_hub
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

if TYPE_CHECKING:
    from adapterctl.core.generate.run import GenerateReport


@dataclass(frozen=True)
class EngineRun:
    """A run's adapters and base, resolved before any engine starts: ``adapters`` as (name, as
    given, local folder), the command line's first and the prompts' after; ``chosen``: the
    command line's names."""

    base_ref: str
    base_dir: Path
    adapters: list[tuple[str, str, Path]]
    chosen: list[str]

    def plan(self, specs: Sequence[PromptSpec], compare: bool) -> list[Job]:
        """The run's jobs, labels naming its adapters (:func:`plan_jobs`)."""
        default = self.chosen[0] if self.chosen and not compare else None
        return plan_jobs(specs, default, adapter_lookup(self.adapters), self.chosen if compare else None)


def resolve_engine_run(
    base_ref: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    *,
    compare: bool,
    hub: HubOptions | None,
    engine: str,
    require: Callable[[], object] = lambda: None,
) -> EngineRun:
    """The adapters of ``--adapter`` and of the prompts, named by the one naming rule and made
    local (downloads), and the base; refusals (weights; ``require``: the engine's missing
    dependency) before any of it."""
    from adapterctl.core.generate.run import prompt_adapters

    choices = list(choices)
    check_one_adapter_per_request([c.weight for c in choices], compare, engine)
    require()  # the missing-dependency error before any download or conversion
    refs = [c.ref for c in choices] + prompt_adapters(choices, specs)
    names = adapter_names(refs, [c.name for c in choices] + [None] * (len(refs) - len(choices)))
    dirs = [resolve_adapter_dir(r, hub) for r in refs]
    if base_ref is None:
        base_ref = default_base(dirs, refs)
    base_dir = resolve_model_dir(base_ref, base_hub(hub))
    return EngineRun(base_ref, base_dir, list(zip(names, refs, dirs)), names[: len(choices)])


def engine_report(
    run: EngineRun, prepared: Sequence[PreparedAdapter], results: Sequence[GenerationResult], compare: bool
) -> GenerateReport:
    """``generate``'s report of a run on vLLM (offline or on Ray)."""
    from adapterctl.core.generate.run import GenerateReport
    from adapterctl.core.runtime.session import AttachedAdapter

    adapters = tuple(AttachedAdapter(p.name, p.source, p.folder, 1.0, _notes(p)) for p in prepared)
    return GenerateReport(run.base_ref, adapters, tuple(results), compare, tuple(run.chosen))


def _notes(p: PreparedAdapter) -> tuple[str, ...]:
    if not p.converted:
        return ()
    return (
        f"vLLM {p.verdict} it as it is: served as converted by convert --for vllm (exact)",
        *p.notes[:1],
    )  # the conversion's own first note (e.g. DoRA's error)
