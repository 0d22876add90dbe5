"""``merge`` from references to a report: resolve the base and the adapters (folders or Hub ids),
plan (:mod:`plan`), and describe what was (or, for a dry run, would be) written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.core.merge.plan import MergeJob, MergeOptions, MergePlan, load_adapters, plan_merge
from adapterctl.core.merge.write import MergeResult, merge_inputs
from adapterctl.core.runtime.session import base_hub
from adapterctl.io.folders.output_dir import check_output, replaces
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir


def plan_from_refs(
    base: str, adapters: list[str], options: MergeOptions = MergeOptions(), hub: HubOptions | None = None
) -> MergeJob:
    """The merge job for a base and adapters given as folders or Hub ids (``user/repo[@rev]``);
    execute it with :func:`adapterctl.core.merge.write.execute_merge`. ``hub.revision`` is the
    adapters' revision, as in every command; the base takes ``user/repo@rev``."""
    base_dir = resolve_model_dir(base, base_hub(hub))
    dirs = [resolve_adapter_dir(a, hub) for a in adapters]
    return plan_merge(base_dir, load_adapters(dirs, list(adapters)), options, base)


@dataclass(frozen=True)
class MergeReport:
    """``merge``'s result: the plan, what was written (None for a dry run) and what the output
    replaces (``[{"path", "exists"}]``, see :func:`check_merge_output`)."""

    plan: MergePlan
    result: MergeResult | None = None
    replaces: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        done = self.result.to_dict() if self.result is not None else {}
        return {
            "dry_run": self.result is None,
            **done,
            "replaces": self.replaces,
            "plan": self.plan.to_dict(),
        }


def check_merge_output(job: MergeJob, output: str | Path | None) -> list[dict]:
    """Refuse an ``output`` that is, holds or sits inside the base or an adapter (as the write
    itself would, so a dry run tells the truth); return what it would replace."""
    if output is not None:
        check_output(output, merge_inputs(job))
    return replaces(output)
