"""The model card of a merged model: the one card writer (:mod:`adapterctl.io.folders.model_card`) with
what this merge did (adapters, weights, combination, rounding, the command)."""

from __future__ import annotations

from adapterctl.io.folders.model_card import MODEL, card_base, render_card


def merged_card(plan, command: str | None = None) -> str:
    """README.md of a merged model folder (``plan``: a :class:`~adapterctl.core.merge.plan.MergePlan`).
    ``base_model`` names the base only when it was given as a Hub id (spec 9.2)."""
    base = card_base(plan.base)[0]
    lines = [
        f"Merged by adapterctl: {len(plan.adapters)} LoRA adapter(s), deltas computed in "
        f"float32 and rounded once to {plan.dtype}.",
        "",
        "| adapter | weight | modules | variants |",
        "|---|---|---|---|",
    ]
    for a in plan.adapters:
        lines.append(
            f"| `{a['source']}` | {a['weight']:g} | {a['modules']} | {', '.join(a['variants']) or '-'} |"
        )
    lines += [
        "",
        f"Combination: {plan.combination}"
        + (f" (density {plan.density}, seed {plan.seed})" if plan.combination != "linear" else ""),
    ]
    if command:
        lines += ["", "Command:", "", "```bash", command, "```"]
    return render_card(None, MODEL, base, title="Merged model", details="\n".join(lines))
