"""Rules, findings and verdicts shared by the serving-engine modules (one data module per engine).

A rule is one thing an engine does with an adapter, read from the engine's source: the engine,
its version and the file it was read from travel with the rule, so every reason ``check`` gives
can be traced to a line of code. A rule returns findings; the verdict of an (adapter, engine)
pair is the worst of them:

- ``serves``: the engine computes what PEFT computes (maybe with serving flags, e.g. a larger
  ``--max-lora-rank``);
- ``changes``: it loads the adapter but computes something else (a scale ignored, a tensor
  skipped, modules that match nothing);
- ``refuses``: it raises (in its own words where it has them).

Each finding also says whether ``convert --for ENGINE`` can remove it (``fix``): ``convert``
(from the adapter alone), ``base`` (needs the base weights), ``drop`` (only by dropping something,
``--drop-unsupported``), or None (nothing adapterctl can do).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter.base_info import is_embedding_name, is_lm_head_name, module_name
from adapterctl.core.adapter.config import BASE_MUTATING_INITS, RECOMPUTABLE_INITS
from adapterctl.core.engine_rules.facts import AdapterFacts, FullTensor, ModuleFacts, layer_of

VERDICTS = ("serves", "changes", "refuses")
_RANK = {"serves": 0, "flag": 0, "changes": 1, "refuses": 2}


#: how a rule is known: ``executed`` (a test runs the engine's own code on adapters and asserts
#: ``check`` agrees: tests/interop/) or ``read`` (from the engine's source, which cannot run here)
PROOFS = ("executed", "read")


@dataclass(frozen=True)
class Source:
    """Where a rule comes from: the engine release, the file in its source tree, and whether the
    rule is executed against that code in the tests or only read from it (``proof``)."""

    engine: str
    version: str
    file: str
    proof: str = "read"

    def cite(self) -> str:
        return f"{self.engine} {self.version}: {self.file}"

    def executed(self) -> Source:
        return Source(self.engine, self.version, self.file, "executed")


@dataclass(frozen=True)
class Finding:
    rule: str
    verdict: str  # "changes" | "refuses" | "flag" (serves with a serving flag)
    message: str
    source: Source
    fix: str | None = None  # "convert" | "base" | "drop" | None
    flags: tuple[str, ...] = ()
    #: what ``convert --for`` does about it: SCALE (bake the scales into lora_B with one r and
    #: one alpha, ranks padded where the engine pads them) or OTHER (its own step)
    kind: str = "other"

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "verdict": "serves" if self.verdict == "flag" else self.verdict,
            "message": self.message,
            "source": self.source.cite(),
            "proof": self.source.proof,
        }


#: Finding.kind values: SCALE (above), PARTNERS_KIND (zero LoRA on the module a stacked
#: projection needs beside the adapted one: SGLang's q/k/v and gate/up stacking), OTHER
SCALE, PARTNERS_KIND, OTHER = "scale", "partners", "other"


@dataclass(frozen=True)
class CheckContext:
    """What a rule may need besides the adapter: how many adapters are served together."""

    num_adapters: int = 1
    #: tensor-parallel size (LoRAX/TGI pad ranks to 8 x world size)
    world_size: int = 1
    #: over all adapters served together: the largest rank, the adapted module names
    max_rank: int = 0
    module_names: frozenset[str] = frozenset()


RuleFn = Callable[[AdapterFacts, CheckContext], "list[Finding]"]


@dataclass(frozen=True)
class Rule:
    id: str
    source: Source
    summary: str  # what the engine does, in one line (docs)
    check: RuleFn

    def run(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        return list(self.check(facts, ctx))


@dataclass(frozen=True)
class Caps:
    """What ``convert --for`` may leave in an adapter for this engine to serve it as trained."""

    rank_pattern: bool = True  # per-module rank honoured (else one r for every module)
    dora: bool = False
    lora_bias: bool = False
    embedding_lora: bool = True  # lora_embedding_A/B on the input embedding
    lm_head_lora: bool = True
    all_layers: bool = False  # a module kind must be adapted in every layer (else skipped)
    pad_rank: bool = False  # ranks padded for SGMV kernels change config.r (LoRAX, TGI)
    max_rank: int | None = None
    #: the only module names the engine attaches LoRA to (None: any linear layer)
    lora_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Engine:
    name: str  # as given to --engine / --for
    title: str
    version: str
    caps: Caps
    rules: tuple[Rule, ...]
    #: serving flags the fix names, and a note shown in docs
    note: str = ""


@dataclass(frozen=True)
class Namer:
    """What every engine module writes alike: the sources it cites at its version, its rules and
    findings named ``<engine>.<id>`` (``vllm.dora``), and its :class:`Engine`. ``project`` is the
    name its sources cite where that is not the engine's (mlx's rules cite ``mlx-lm``)."""

    name: str
    version: str
    project: str = ""

    def source(self, file: str, proof: str = "read") -> Source:
        return Source(self.project or self.name, self.version, file, proof)

    def finding(
        self,
        rule: str,
        verdict: str,
        message: str,
        source: Source,
        fix: str | None = None,
        *,
        flags: tuple[str, ...] = (),
        kind: str = "other",
    ) -> Finding:
        return Finding(f"{self.name}.{rule}", verdict, message, source, fix, flags, kind)

    def rule(self, rid: str, source: Source, summary: str, check: RuleFn) -> Rule:
        return Rule(f"{self.name}.{rid}", source, summary, check)

    def engine(self, title: str, caps: Caps, rules: tuple[Rule, ...], note: str = "") -> Engine:
        return Engine(name=self.name, title=title, version=self.version, caps=caps, rules=rules, note=note)


@dataclass(frozen=True)
class EngineVerdict:
    adapter: str
    engine: str
    engine_version: str
    verdict: str
    reasons: list[Finding] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    fix: str | None = None

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "verdict": self.verdict,
            "reasons": [f.to_dict() for f in self.reasons],
            "flags": list(self.flags),
            "fix": self.fix,
        }


def evaluate(
    engine: Engine, facts: AdapterFacts, ctx: CheckContext | None = None
) -> tuple[str, list[Finding]]:
    """Run every rule of ``engine``; the verdict is the worst finding (serves when none)."""
    ctx = ctx or CheckContext()
    findings = [f for rule in engine.rules for f in rule.run(facts, ctx)]
    findings += expert_findings(engine, facts)  # target_parameters (MoE experts), below
    findings.sort(key=lambda f: -_RANK[f.verdict])  # refusals first, then changes (stable)
    worst = max((_RANK[f.verdict] for f in findings), default=0)
    return VERDICTS[worst], findings


# ----- helpers the engine modules share -----------------------------------------------------
def fmt_scale(x: float) -> str:
    return f"{x:.4g}"


def scale_changes(
    facts: AdapterFacts, engine_scale: Callable[[ModuleFacts], float]
) -> list[tuple[ModuleFacts, float]]:
    """Modules whose engine scale differs from PEFT's (spec 2), with the engine's value."""
    out = []
    for m in facts.modules:
        s = engine_scale(m)
        if not math.isclose(s, m.scaling, rel_tol=1e-6, abs_tol=1e-12):
            out.append((m, s))
    return out


def describe_scales(pairs: list[tuple[ModuleFacts, float]], what: str) -> str:
    """'rsLoRA scale ignored: effective scale 2.0 instead of 0.7071 (16 of 16 modules)'."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m, s in pairs:
        groups[(fmt_scale(s), fmt_scale(m.scaling))].append(m.path)
    parts = [
        f"effective scale {eng} instead of {peft} ({len(paths)} module"
        f"{'s' if len(paths) != 1 else ''}, e.g. {paths[0]})"
        for (eng, peft), paths in list(groups.items())[:3]
    ]
    more = f"; and {len(groups) - 3} more scale pairs" if len(groups) > 3 else ""
    return f"{what}: " + "; ".join(parts) + more


def per_layer(paths: list[str]) -> str:
    """'7 per layer in layers 0-3 (q_proj, k_proj, ...)' or a plain count."""
    by_layer: dict[int | None, list[str]] = defaultdict(list)
    for p in paths:
        by_layer[layer_of(p)].append(module_name(p))
    layers = sorted(k for k in by_layer if k is not None)
    parts = []
    if layers:
        counts = {len(by_layer[k]) for k in layers}
        names = sorted({n for k in layers for n in by_layer[k]})
        span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        if len(counts) == 1:
            parts.append(f"{counts.pop()} per layer in layers {span} ({', '.join(names[:7])})")
        else:
            parts.append(f"{sum(len(by_layer[k]) for k in layers)} in layers {span} ({', '.join(names[:7])})")
    if None in by_layer:
        parts.append(", ".join(sorted(set(by_layer[None]))[:5]) + " outside the layers")
    return "; ".join(parts)


def residual_fix(facts: AdapterFacts) -> Literal["base", False] | None:
    """False for an adapter trained on the unmodified base; else the fix for one trained on a
    residual its initialiser made (spec 1.7): "base" (``convert --base`` recomputes PiSSA/OLoRA's
    residual) or None (nothing can)."""
    kind = facts.config.init_kind
    if kind not in BASE_MUTATING_INITS:
        return False
    return "base" if kind in RECOMPUTABLE_INITS else None


def unmatched_modules(facts: AdapterFacts) -> list[str]:
    """Adapted modules the base has no module for (needs the base's parameter names)."""
    if facts.base is None or facts.base.params is None:
        return []
    return [m.path for m in facts.modules if facts.base.param_shape(m.path + ".weight") is None]


def partial_kinds(facts: AdapterFacts) -> dict[str, list[int]]:
    """Module names (q_proj, ...) adapted in some decoder layers but not all: name -> missing
    layers. The layer count is the base's, else the highest layer the adapter touches."""
    layers: dict[str, set[int]] = defaultdict(set)
    for m in facts.modules:
        if m.layer is not None:
            layers[m.name].add(m.layer)
    if not layers:
        return {}
    n = facts.base.num_layers if facts.base and facts.base.num_layers else None
    n = n or 1 + max(max(v) for v in layers.values())
    return {name: [i for i in range(n) if i not in seen] for name, seen in layers.items() if len(seen) < n}


def resized_tables(facts: AdapterFacts) -> list[str]:
    """Full tensors whose shape differs from the base's (a resized vocabulary), described."""
    out = []
    for t in facts.full_tensors:
        base_shape = facts.base.param_shape(t.param) if facts.base else None
        if base_shape is not None and base_shape != t.shape:
            out.append(f"{t.param} is {list(t.shape)}, the base's {list(base_shape)}")
    return out


#: how hard a finding is to remove with ``convert --for``, easiest first
FIX_ORDER = {"convert": 0, "base": 1, "drop": 2, None: 3}


def worst_fix(fixes) -> str | None:
    return max(fixes, key=lambda f: FIX_ORDER[f], default="convert")


def tensor_fix(t: FullTensor, caps: Caps, facts: AdapterFacts | None = None) -> str | None:
    """What convert can do with a full tensor: a 2-D weight of a module the engine adapts with
    LoRA becomes a full-rank LoRA (exact, needs the base); anything else can only be dropped.
    A table of another shape than the base's (a resized vocabulary): nothing."""
    base_shape = facts.base.param_shape(t.param) if facts is not None and facts.base else None
    if base_shape is not None and base_shape != t.shape:
        return None
    if len(t.shape) != 2 or not t.param.endswith(".weight"):
        return "drop"
    if is_embedding_name(t.module):
        return "base" if caps.embedding_lora else "drop"
    if is_lm_head_name(t.module):
        return "base" if caps.lm_head_lora else "drop"
    return "base"


# ----- target_parameters (LoRA on fused MoE expert parameters, spec 5.6) --------------------
# vLLM 0.32 reads PEFT's layout, assuming its nesting: vllm/lora/lora_model.py
# (check_unexpected_modules: "experts.base_layer is the gate_up_proj and experts is the down_proj")
# and vllm/lora/peft_helper.py (get_rank_and_scaling maps ``.experts.base_layer`` to gate_up_proj
# and ``.experts`` to down_proj), so any other nesting (gate_up_proj alone, a router weight) lands
# on the wrong parameter. In PEFT's nesting it loads (add_lora accepts it, "MoE model detected.
# Using fused MoE LoRA implementation": vllm/lora/layers/fused_moe.py FusedMoE3DWithLoRA), but the
# fused-MoE LoRA kernels are Triton ("Using TRITON Unquantized MoE LoRA backend"): on the CPU
# build the engine dies on the first generation (AttributeError: module 'triton.language' has no
# attribute 'float32'; measured on tiny Mixtral, tests/interop/test_vllm_moe.py). GPU builds are
# not verified by adapterctl. The other engines: no rule read from their sources covers expert
# parameters, so they are reported as not serving it.
def expert_findings(engine: Engine, facts: AdapterFacts) -> list[Finding]:
    if not facts.experts:
        return []
    rid, n = f"{engine.name}.target_parameters", len(facts.experts)
    if engine.name == "sglang":
        # re-read for 0.5.23 (not executed: needs an SGLang FusedMoE base): lora.py /
        # mem_pool.py load MoE LoRA in SGLang's own layouts only
        return [
            Finding(
                rid,
                "refuses",
                f"{n} target_parameters LoRA(s) on MoE expert parameters (e.g. {facts.experts[0]}): "
                "SGLang 0.5.23 loads expert LoRA as per-expert `experts.<i>.<proj>` keys or 3-D "
                "shared-outer tensors; PEFT's 2-D ParamWrapper keys (`experts[.base_layer].lora_A`, "
                "r x experts rows) are neither and match no target module (get_target_module_name: "
                "ValueError)",
                Source("sglang", engine.version, "python/sglang/srt/lora/mem_pool.py"),
            )
        ]
    if engine.name != "vllm":
        return [
            Finding(
                rid,
                "refuses",
                f"{n} target_parameters LoRA(s) on MoE expert parameters "
                f"(e.g. {facts.experts[0]}): adapterctl knows no support for LoRA on "
                f"fused expert parameters in {engine.title} {engine.version}",
                Source(engine.name, engine.version, "no rule read for expert parameters"),
            )
        ]
    wrong = [p for p in facts.experts if not _vllm_layout(facts, p)]
    if wrong:
        return [
            Finding(
                rid,
                "refuses",
                f"vLLM maps PEFT's outer `experts` wrapper to down_proj "
                f"and `experts.base_layer` to gate_up_proj; this adapter's {wrong[0]} "
                "is not one of those, so vLLM would apply it to the wrong parameter",
                Source("vllm", engine.version, "vllm/lora/lora_model.py"),
            )
        ]
    return [
        Finding(
            rid,
            "refuses",
            f"{n} MoE expert LoRA(s) in PEFT's gate_up_proj/down_proj "
            "layout: vLLM loads them into its fused-MoE LoRA layers, whose kernels are "
            "Triton; on vLLM's CPU build the engine dies at the first generation "
            "(\"module 'triton.language' has no attribute 'float32'\", measured); GPU "
            "builds are not verified by adapterctl",
            Source("vllm", engine.version, "vllm/lora/layers/fused_moe.py"),
        )
    ]


def _vllm_layout(facts: AdapterFacts, path: str) -> bool:
    module, _, param = path.rpartition(".")
    params = X.registration_order(X.params_of(facts.config, module))
    depth = len(params) - 1 - params.index(param)
    return (param, depth) in (("down_proj", 0), ("gate_up_proj", 1)) and len(params) <= 2


# ----- rule factories: the rules several engines share, one shape ---------------------------
def init_rule(engine: str, source: Source, who: str) -> Rule:
    """PiSSA/OLoRA/... trained on a residual of the base that the engine does not recompute:
    ``changes``, fixed by ``convert --base`` where the residual can be recomputed (spec 1.7)."""

    def check(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        fix = residual_fix(facts)
        if fix is False:
            return []
        return [
            Finding(
                f"{engine}.init",
                "changes",
                f"init_lora_weights={facts.config.init_lora_weights!r}: {who} applies the adapter "
                "to the unmodified base, not to the residual it was trained on",
                source,
                fix,
            )
        ]

    return Rule(f"{engine}.init", source, "PiSSA/OLoRA/... inits not recomputed", check)


def unmatched_rule(engine: str, source: Source, verdict: str, what: Callable[[list[str]], str]) -> Rule:
    """Adapted modules the base has no module for (needs the base's parameter names); ``what``
    says what the engine does with them, from the list of their paths."""

    def check(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        missing = unmatched_modules(facts)
        if not missing:
            return []
        return [
            Finding(
                f"{engine}.no_such_module",
                verdict,
                f"{len(missing)} of {len(facts.modules)} adapted modules match no module of "
                f"{facts.base_name} ({per_layer(missing)}; e.g. {missing[0]}): {what(missing)}",
                source,
            )
        ]

    summary = "modules the model lacks: " + ("refused" if verdict == "refuses" else "no effect")
    return Rule(f"{engine}.no_such_module", source, summary, check)


def scale_rule(
    engine: str,
    source: Source,
    summary: str,
    engine_scale: Callable[[AdapterFacts, ModuleFacts], float],
    what,
) -> Rule:
    """The engine computes a module's scale its own way (``engine_scale``): where it differs from
    PEFT's, ``changes``, fixed by baking the scales into lora_B (kind SCALE). ``what(facts)`` names
    the cause."""

    def check(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        changed = scale_changes(facts, lambda m: engine_scale(facts, m))
        if not changed:
            return []
        return [
            Finding(
                f"{engine}.scaling",
                "changes",
                describe_scales(changed, what(facts)),
                source,
                "convert",
                kind=SCALE,
            )
        ]

    return Rule(f"{engine}.scaling", source, summary, check)
