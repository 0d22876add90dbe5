"""``check``: will each serving engine serve each adapter as trained? Headers only, no torch.

For every (adapter, engine) pair: one verdict (:mod:`adapterctl.core.engine_rules.rules`), the reasons
with their sources, the serving flags, and the fix: a ``convert --for`` command line when
adapterctl can rewrite the adapter so that the engine serves it, else None.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.core.adapter.base_info import BaseInfo, local_base, read_base_info
from adapterctl.core.engine_rules import llama_cpp, lorax, mlx, sglang, tgi, trtllm, vllm
from adapterctl.core.engine_rules.base_fit import check_base_fit, mapping_note
from adapterctl.core.engine_rules.facts import AdapterFacts
from adapterctl.core.engine_rules.names import ALL, canonical_engine
from adapterctl.core.engine_rules.rules import (
    CheckContext,
    Engine,
    EngineVerdict,
    Finding,
    evaluate,
    worst_fix,
)
from adapterctl.errors import UsageError

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        vllm.ENGINE,
        sglang.ENGINE,
        lorax.ENGINE,
        llama_cpp.ENGINE,
        mlx.ENGINE,
        tgi.ENGINE,
        trtllm.ENGINE,
    )
}


def engine_names(spec: list[str] | str | None) -> list[str]:
    """``--engine vllm --engine sglang``, ``--engine vllm,sglang`` or ``all`` (the default)."""
    items = [spec] if isinstance(spec, str) else list(spec or [ALL])
    names: list[str] = []
    for item in items:
        for text in (p.strip() for p in item.split(",") if p.strip()):
            name, _ = canonical_engine(text)
            if name == ALL:
                names += [n for n in ENGINES if n not in names]
            elif name in ENGINES:
                names.append(name)
            else:
                raise UsageError(f"unknown engine {text!r}", hint=f"Engines: {', '.join(ENGINES)} or {ALL}.")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class CheckReport:
    results: list[EngineVerdict]
    base: str | None = None
    notes: list[str] = field(default_factory=list)
    #: adapter (as typed) -> the text <-> VLM mapping attach/merge use on this base, or None
    key_mappings: dict[str, dict | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.verdict == "serves" for r in self.results)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "base": self.base,
            "results": [r.to_dict() for r in self.results],
            "notes": list(self.notes),
            "key_mappings": dict(self.key_mappings),
        }


def fix_command(
    engine: Engine, facts: AdapterFacts, findings: list[Finding], base_arg: str | None
) -> str | None:
    """The command that makes ``engine`` serve the adapter, or None when none can."""
    bad = [f for f in findings if f.verdict in ("changes", "refuses")]
    if not bad:
        flags = [flag for f in findings for flag in f.flags]
        return " ".join(flags) or None
    fix = worst_fix(f.fix for f in bad)
    if fix is None:
        return None
    out = f"{Path(facts.source.rstrip('/')).name or 'adapter'}-{engine.name.replace('.', '')}"
    cmd = ["adapterctl", "convert", facts.source, out, "--for", engine.name]
    if any(f.fix == "base" for f in bad):
        cmd += ["--base", base_arg or facts.config.base_model_name_or_path or "BASE"]
    if fix == "drop":
        cmd.append("--drop-unsupported")
    return shlex.join(cmd)


def check_facts(
    facts_list: list[AdapterFacts], engines: list[str], base_arg: str | None = None
) -> list[EngineVerdict]:
    ctx = CheckContext(
        num_adapters=len(facts_list),
        max_rank=max((f.max_rank for f in facts_list), default=0),
        module_names=frozenset(m.name for f in facts_list for m in f.modules),
    )
    out = []
    for facts in facts_list:
        for name in engines:
            engine = ENGINES[name]
            verdict, findings = evaluate(engine, facts, ctx)
            flags = [flag for f in findings for flag in f.flags]
            reasons = [f for f in findings if f.verdict != "flag" or verdict == "serves"]
            out.append(
                EngineVerdict(
                    facts.source,
                    engine.name,
                    engine.version,
                    verdict,
                    reasons,
                    flags,
                    fix_command(engine, facts, findings, base_arg),
                )
            )
    return out


def check_adapters(
    adapters: list[tuple[str, str]],
    engines: list[str] | str | None = None,
    base: tuple[str, str] | None = None,
) -> CheckReport:
    """``adapters``: (local folder, name as typed); ``base``: (local folder, name as typed), else
    each adapter's ``base_model_name_or_path`` when that is a local model folder."""
    from adapterctl.core.engine_rules.facts import read_adapter_facts

    names = engine_names(engines)
    base_info = read_base_info(base[0], base[1]) if base else None
    facts_list, notes, mappings = [], [], {}
    for folder, shown in adapters:
        facts = read_adapter_facts(folder, shown, base_info)
        if base_info is None:
            own = _local_base(facts)
            if own is not None:
                facts = read_adapter_facts(folder, shown, own)
            else:
                notes.append(
                    f"{shown}: base not checked (give --base BASE): module names, "
                    "vocabulary and tied embeddings are not compared"
                )
        mapping = check_base_fit(facts)  # the silent no-op refused; text <-> VLM paths
        mappings[shown] = mapping.to_dict() if mapping else None
        notes += [mapping_note(facts, mapping)] if mapping else []
        facts_list.append(facts)
    return CheckReport(
        check_facts(facts_list, names, base[1] if base else None), base[1] if base else None, notes, mappings
    )


def _local_base(facts: AdapterFacts) -> BaseInfo | None:
    name = facts.config.base_model_name_or_path
    return read_base_info(name, name) if name and local_base(name) else None
