"""LoRAX (predibase/lorax main at a7394ba3, 2026-05-28, after v0.12.1): which PEFT LoRA adapters
it serves as trained. Read from ``server/lorax_server/adapters/lora.py``: ``LoraConfig.load``
keeps r, lora_alpha, use_rslora, target_modules and fan_in_fan_out of the PEFT config (no
patterns, no DoRA); ``map_weights_for_model`` takes only ``<module>.lora_A.weight`` and
``<module>.lora_B.weight`` of the model's target layers; ``LoraWeights.load`` scales every module
by ``get_scaling_factor(lora_alpha, r, use_rslora)`` and stacks one module kind over all layers
(``torch.stack``), returning nothing for the kind when a layer lacks it. Every tensor left over
is logged, not applied (``server/lorax_server/models/model.py``: "unused adapter weights").

TGI's LoRA support is this code (``text_generation_server/adapters/lora.py`` says "Origin:
predibase/lorax"), so :mod:`adapterctl.core.engine_rules.tgi` builds its rules with
:func:`punica_rules` and its own sources. Neither engine runs on this machine (GPU kernels), so
these rules are covered by rule tests with their sources cited.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from adapterctl.core.engine_rules.facts import AdapterFacts
from adapterctl.core.engine_rules.rules import (
    Caps,
    CheckContext,
    Engine,
    Finding,
    Rule,
    Source,
    describe_scales,
    partial_kinds,
    per_layer,
    residual_fix,
    scale_changes,
    unmatched_modules,
)

VERSION = "a7394ba3"
LORA = Source("lorax", VERSION, "server/lorax_server/adapters/lora.py")
MODEL = Source("lorax", VERSION, "server/lorax_server/models/model.py")

#: ``ADAPTER_LAYERS`` of the Llama-family models (server/lorax_server/models/flash_llama.py)
LLAMA_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
CAPS = Caps(
    rslora=True,
    alpha_pattern=False,
    rank_pattern=False,
    dora=False,
    lora_bias=False,
    embedding_lora=False,
    lm_head_lora=True,
    all_layers=True,
    lora_modules=LLAMA_LAYERS,
)


@dataclass(frozen=True)
class PunicaLoader:
    """The LoRAX adapter loader as one engine ships it: the engine's name, where its loader and
    its "unused adapter weights" warning are, and the module names it attaches LoRA to (for
    Llama-family models). Each method is one rule's check."""

    engine: str
    lora: Source
    unused: Source
    unused_words: str
    layers: tuple[str, ...]
    layers_source: Source

    def finding(self, rule: str, verdict: str, message: str, source: Source, fix: str | None = None):
        return Finding(f"{self.engine}.{rule}", verdict, message, source, fix)

    def scaling(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        cfg = facts.config
        s = cfg.lora_alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
        changed = scale_changes(facts, lambda m: s)
        if not changed:
            return []
        return [
            self.finding(
                "scaling",
                "changes",
                describe_scales(
                    changed,
                    "rank_pattern/alpha_pattern ignored (every module is scaled "
                    f"get_scaling_factor(lora_alpha={cfg.lora_alpha:g}, r={cfg.r}"
                    f"{', rsLoRA' if cfg.use_rslora else ''}))",
                ),
                self.lora,
                "convert",
            )
        ]

    def stacked_ranks(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        ranks: dict[str, set[int]] = defaultdict(set)
        for m in facts.modules:
            ranks[m.name].add(m.r)
        mixed = {k: sorted(v) for k, v in ranks.items() if len(v) > 1}
        if not mixed:
            return []
        name, rs = next(iter(mixed.items()))
        return [
            self.finding(
                "stacked_ranks",
                "refuses",
                f"{name} has ranks {rs} in different layers; the "
                'loader stacks one module kind over all layers (torch.stack: "stack expects '
                'each tensor to be equal size")',
                self.lora,
                "convert",
            )
        ]

    def partial_layers(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        missing = partial_kinds(facts)
        if not missing:
            return []
        name, layers = next(iter(missing.items()))
        return [
            self.finding(
                "partial_layers",
                "changes",
                f"{', '.join(sorted(missing))} adapted in some "
                f"layers only ({name} missing in layers {layers[:8]}): the loader returns no "
                "weights for a module kind that a layer lacks, so those modules are not "
                "applied in any layer",
                self.lora,
                "convert",
            )
        ]

    def dora(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        if not facts.config.use_dora:
            return []
        return [
            self.finding(
                "dora",
                "changes",
                "DoRA is not read: lora_magnitude_vector tensors are left "
                f"unused ({self.unused_words}) and the adapter runs as plain LoRA",
                self.unused,
                "base",
            )
        ]

    def unused_tensors(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        names = [t.key for t in facts.full_tensors if t.role != "frozen_copy"]
        names += [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
        names += [m.path + ".lora_embedding_A" for m in facts.modules if m.kind == "embedding"]
        names += [f"{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
        if not names:
            return []
        return [
            self.finding(
                "unused_tensors",
                "changes",
                f"{len(names)} tensors are not lora_A/lora_B "
                f"weights of a linear layer and are left unused ({self.unused_words}), e.g. "
                f"{names[0]}",
                self.unused,
                "drop",
            )
        ]

    def adapter_layers(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        odd = [m.path for m in facts.modules if m.name not in self.layers and m.kind != "embedding"]
        if not odd:
            return []
        return [
            self.finding(
                "adapter_layers",
                "changes",
                f"{len(odd)} modules are not among the layers "
                f"{self.engine} attaches LoRA to ({', '.join(self.layers)}; Llama-family models), their "
                f"tensors are left unused ({self.unused_words}), e.g. {odd[0]}",
                self.layers_source,
                "drop",
            )
        ]

    def init(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        fix = residual_fix(facts)
        if fix is False:
            return []
        return [
            self.finding(
                "init",
                "changes",
                f"init_lora_weights={facts.config.init_lora_weights!r}: "
                "the adapter is applied to the unmodified base, not to the residual it was "
                "trained on",
                self.lora,
                fix,
            )
        ]

    def no_such_module(self, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
        missing = unmatched_modules(facts)
        if not missing:
            return []
        return [
            self.finding(
                "no_such_module",
                "changes",
                f"{len(missing)} of {len(facts.modules)} "
                f"adapted modules match no module of {facts.base_name} ({per_layer(missing)};"
                f" e.g. {missing[0]}): their tensors are left unused ({self.unused_words})",
                self.unused,
            )
        ]


def punica_rules(
    engine: str,
    lora: Source,
    unused: Source,
    unused_words: str,
    layers: tuple[str, ...],
    layers_source: Source,
) -> tuple[Rule, ...]:
    """The rules of the LoRAX adapter loader, for LoRAX and for its copy in TGI. ``layers``:
    the module names the server attaches LoRA to (for Llama-family models)."""
    p = PunicaLoader(engine, lora, unused, unused_words, layers, layers_source)

    def rule(rid: str, source: Source, summary: str, fn) -> Rule:
        return Rule(f"{engine}.{rid}", source, summary, fn)

    return (
        rule(
            "scaling",
            lora,
            "one scale from the config's r and lora_alpha (rsLoRA honoured, patterns ignored)",
            p.scaling,
        ),
        rule("stacked_ranks", lora, "one rank per module kind across layers", p.stacked_ranks),
        rule(
            "partial_layers", lora, "a module kind missing in a layer is dropped everywhere", p.partial_layers
        ),
        rule("dora", unused, "DoRA magnitudes unused", p.dora),
        rule(
            "unused_tensors",
            unused,
            "full tensors, lora_bias, embedding LoRA, token rows unused",
            p.unused_tensors,
        ),
        rule(
            "adapter_layers", layers_source, "LoRA only on the adapter layers of the model", p.adapter_layers
        ),
        rule("init", lora, "PiSSA/OLoRA/... inits not recomputed", p.init),
        rule("no_such_module", unused, "modules the model lacks: unused", p.no_such_module),
    )


LLAMA = Source("lorax", VERSION, "server/lorax_server/models/flash_llama.py")

ENGINE = Engine(
    name="lorax",
    title="LoRAX",
    version=VERSION,
    caps=CAPS,
    rules=punica_rules("lorax", LORA, MODEL, '"unused adapter weights" warning', LLAMA_LAYERS, LLAMA),
)
