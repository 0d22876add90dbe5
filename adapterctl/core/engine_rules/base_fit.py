"""``check``'s questions about the base before any engine's: does the adapter land in it at all,
and through which text <-> VLM mapping (core/adapter/prefixes.py) adapterctl's own attach, merge
and generate would put it there. From headers, without torch.

An adapter none of whose modules exists in the base is the silent no-op: PEFT loads it with an
"unexpected keys" warning and leaves the base as it was, vLLM skips the modules. ``check``
refuses it (exit 6) instead of giving verdicts about an adapter that would change nothing."""

from __future__ import annotations

from adapterctl.core.adapter.compat import check_modules_present
from adapterctl.core.adapter.prefixes import (
    KeyMapping,
    base_mapping,
    in_layout_of,
    vision_problem,
)
from adapterctl.core.adapter.problems import as_error
from adapterctl.core.engine_rules.facts import AdapterFacts


def _paths(facts: AdapterFacts) -> list[str]:
    return [*(m.path for m in facts.modules), *(t.param for t in facts.full_tensors), *facts.trainable_tokens]


def check_base_fit(facts: AdapterFacts) -> KeyMapping | None:
    """The mapping attach and merge would use (None: the paths fit as saved); raises when the
    adapter has vision modules and the base is text-only, or when no module lands (exit 6)."""
    base = facts.base
    if base is None or not base.params:
        return None
    paths = _paths(facts)
    mapping = base_mapping(paths, base.params)
    problem = vision_problem(mapping, paths, base.source) if mapping else None
    modules = [m.path for m in facts.modules]
    problem = problem or check_modules_present(
        in_layout_of(modules, base.params),
        set(base.params),
        base.tie_word_embeddings,
        base.source,
        base.model_type,
    )
    if problem:
        raise as_error(problem, facts.source)
    return mapping


def mapping_note(facts: AdapterFacts, mapping: KeyMapping) -> str:
    """What the mapping means for the engines, which read the keys as saved."""
    base = facts.base
    landed = base is not None and any(base.param_shape(m.path + ".weight") is not None for m in facts.modules)
    there = (
        ""
        if landed
        else ": as saved they match no module of the base, so PEFT and the "
        "engines below leave it unchanged (a silent no-op)"
    )
    return (
        f"{facts.source}: adapterctl attach, merge and generate map its module paths "
        f"{mapping.describe()}; PEFT and serving engines read them as saved{there}"
    )
