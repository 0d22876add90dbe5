"""Prompts as jobs for an engine other than ours (vLLM's offline engine in this process, an
OpenAI-compatible server): which adapter each prompt goes through, and the results split back into ``generate``'s
runs. The same rules as our own engine's router (:mod:`adapterctl.core.generate.routing`):

- a prompt that names no adapter uses the command line's ``--adapter`` (or the base alone);
- a JSONL ``adapter`` of ``null``/``"base"`` is the base alone, anything else an adapter by name
  (or, where the engine can tell, by path);
- ``--compare``: every prompt once on the base and once per ``--adapter``, each a run of its own.

These engines apply one adapter per request (vLLM's ``LoRARequest``, a served adapter name), so
a weighted combination of several adapters is refused here, before anything starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec, named_adapter
from adapterctl.core.generate.results import Completion, GenerationResult
from adapterctl.errors import AdapterctlError, UsageError


@dataclass(frozen=True)
class Job:
    """One prompt for one adapter. ``label``: the adapter's name in results (None: the base)."""

    spec: PromptSpec
    label: str | None
    variant: int = 0  # which run it belongs to (``--compare``: 0 is the base)


def check_one_adapter_per_request(weights: Sequence[float], compare: bool, engine: str) -> None:
    """These engines run one adapter per request at its trained scale: no sums, no weights."""
    if any(w != 1.0 for w in weights):
        raise UsageError(
            f"{engine} applies adapters at weight 1 only",
            hint="Drop the =WEIGHT suffix, or use --engine adapterctl for weighted combinations.",
        )
    if len(weights) > 1 and not compare:
        raise UsageError(
            f"{engine} applies one adapter per request: several --adapter options "
            "would be a weighted combination",
            hint="Pass one --adapter, add --compare to run each alone, or name each "
            "prompt's adapter in a JSONL prompts file.",
        )


def plan_jobs(
    specs: Sequence[PromptSpec],
    default: str | None,
    lookup: Callable[[str], str | None],
    compare: Sequence[str] | None = None,
) -> list[Job]:
    """Jobs in prompt order. ``default``: the ``--adapter`` label (None: the base); ``lookup``:
    an adapter label from what a prompt names, or None if the engine has no such adapter;
    ``compare``: the adapter labels to compare with the base (one run each, base first)."""
    if compare is not None:
        variants: list[str | None] = [None, *compare]
        return [Job(s, label, k) for k, label in enumerate(variants) for s in specs]
    jobs = []
    for s in specs:
        if s.adapter is None:  # DEFAULT_KEY (None): the command line's adapters
            jobs.append(Job(s, default))
        elif s.adapter == BASE_KEY:
            jobs.append(Job(s, None))
        else:
            jobs.append(Job(s, named_adapter(s, lookup)))
    return jobs


def split_runs(
    jobs: Sequence[Job],
    done: Sequence[Completion | None],
    *,
    mode: str,
    seed: int | None,
    elapsed_s: float,
    interrupted: bool = False,
    error: AdapterctlError | None = None,
    warnings: Sequence[str] = (),
) -> list[GenerationResult]:
    """One result per variant, completions in prompt order; jobs without a completion (never
    started, after a failure) are left out. The elapsed time is shared: the variants ran
    together."""
    n = max((j.variant for j in jobs), default=0) + 1
    runs: list[list[Completion]] = [[] for _ in range(n)]
    for job, c in zip(jobs, done):
        if c is not None:
            runs[job.variant].append(c)
    return [
        GenerationResult(tuple(r), interrupted, seed, mode, elapsed_s / n, tuple(warnings), error)
        for r in runs
    ]


def interrupted_completion(job: Job) -> Completion:
    """A job in flight when Ctrl-C came: nothing came back for it."""
    return Completion(job.spec.id, job.spec.prompt, job.label, "", (), "interrupted", None, 0.0)
