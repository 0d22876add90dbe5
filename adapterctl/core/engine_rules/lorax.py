"""LoRAX (predibase/lorax main at a7394ba3, 2026-05-28, after v0.12.1): which PEFT LoRA adapters
it serves as trained. Read from ``server/lorax_server/adapters/lora.py``: ``LoraConfig.load``
keeps r, lora_alpha, use_rslora, target_modules and fan_in_fan_out of the PEFT config (no
patterns, no DoRA); ``map_weights_for_model`` takes only ``<module>.lora_A.weight`` and
``<module>.lora_B.weight`` of the model's target layers; ``LoraWeights.load`` scales every module
by ``get_scaling_factor(lora_alpha, config.r, use_rslora)`` and stacks one module kind over all
layers (``torch.stack``), returning nothing for the kind when a layer lacks it. Every tensor left
over is logged, not applied (``server/lorax_server/models/model.py``: "unused adapter weights").

Two readings that change the scale: the SGMV kernels need padded ranks, so after the first
module kind ``LoraWeights.load`` pads the tensors (``utils/sgmv.py`` ``pad_rank``: r <= 8 x
world size -> 8 x world size, else the next multiple of 16) and sets ``config.r`` to the padded
rank, which every later module kind divides lora_alpha by; and the server pins ``peft = "^0.4.0"``
(``server/pyproject.toml``), whose LoraConfig has no ``use_rslora``, so rsLoRA is ignored.
``ADAPTER_LAYERS`` (the module kinds LoRA is attached to, in load order) is per model type
(``server/lorax_server/models/flash_<type>.py``).

TGI's LoRA support is this code (``text_generation_server/adapters/lora.py`` says "Origin:
predibase/lorax"), so :mod:`adapterctl.core.engine_rules.tgi` builds its rules with
:func:`punica_rules` and its own sources. Neither engine's adapter code can run here (its
loader needs the SGMV/punica CUDA kernels and a sharded flash model), so these rules are
``read``: covered by rule tests against a faithful re-implementation of the cited code.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

from adapterctl.core.engine_rules.facts import AdapterFacts, ModuleFacts
from adapterctl.core.engine_rules.rules import (
    SCALE,
    Caps,
    CheckContext,
    Finding,
    Namer,
    Rule,
    Source,
    describe_scales,
    init_rule,
    partial_kinds,
    scale_changes,
    unmatched_rule,
)

VERSION = "a7394ba3"
LORAX = Namer("lorax", VERSION)
LORA = LORAX.source("server/lorax_server/adapters/lora.py")
SGMV = LORAX.source("server/lorax_server/utils/sgmv.py")
MODEL = LORAX.source("server/lorax_server/models/model.py")
PYPROJECT = LORAX.source("server/pyproject.toml")
LLAMA = LORAX.source("server/lorax_server/models/flash_llama.py")
MODELS = LORAX.source("server/lorax_server/models/flash_<model_type>.py")

#: ``ADAPTER_LAYERS`` of the Llama-family models (server/lorax_server/models/flash_llama.py)
LLAMA_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
#: ``ADAPTER_LAYERS`` per model type, in load order (server/lorax_server/models/flash_<type>.py);
#: a dotted kind is matched on the module path's last two names (GPT-2's two c_proj)
ADAPTER_LAYERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "granite", "solar", "cohere"), LLAMA_LAYERS),
    "gemma": LLAMA_LAYERS[:-1],
    "gemma2": LLAMA_LAYERS[:-1],
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),  # "TODO(travis): add back LM_HEAD"
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),  # "# LM_HEAD"
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "lm_head"),
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "qwen": ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj", "lm_head"),
}
CAPS = Caps(
    rank_pattern=False,
    dora=False,
    lora_bias=False,
    embedding_lora=False,
    lm_head_lora=True,
    all_layers=True,
    lora_modules=LLAMA_LAYERS,
    pad_rank=True,
)

#: utils/sgmv.py: MIN_SGMV_RANK, SGMV_BLOCK_SIZE
MIN_SGMV_RANK, SGMV_BLOCK_SIZE = 8, 16


def padded_rank(r: int, world_size: int = 1) -> int:
    """``pad_rank``: up to 8 x world size, else up to the next multiple of 16."""
    low = MIN_SGMV_RANK * world_size
    return low if r <= low else -(-r // SGMV_BLOCK_SIZE) * SGMV_BLOCK_SIZE


def kind_of(path: str, kinds: tuple[str, ...]) -> str | None:
    """The ADAPTER_LAYERS entry a module path is loaded as, if any."""
    return next((k for k in kinds if path == k or path.endswith("." + k)), None)


@dataclass(frozen=True)
class Punica:
    """One engine built on LoRAX's loader: its name, sources and what differs (TGI's copy)."""

    engine: str
    lora: Source  # adapters/lora.py
    pad: Source  # where pad_rank is
    unused: Source  # where unused weights are logged
    layers: dict[str, tuple[str, ...]]  # model type -> module kinds in load order
    default_layers: tuple[str, ...]
    layers_source: Source
    rslora: bool  # does its PEFT LoraConfig read use_rslora
    rslora_source: Source | None = None
    #: full paths only (TGI's hard-coded ``model.layers.{i}.self_attn.<name>``); else by name
    paths: bool = False

    @property
    def namer(self) -> Namer:
        return Namer(self.engine, self.lora.version)

    def kinds(self, facts: AdapterFacts) -> tuple[str, ...]:
        mt = facts.base.model_type if facts.base else None
        return self.layers.get(mt or "", self.default_layers)


def punica_scales(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> dict[str, float]:
    """The scale each applied module gets: module kinds load in ADAPTER_LAYERS order, each scaled
    by lora_alpha / config.r, and config.r becomes the padded rank once a kind has loaded (a kind
    missing in some layer loads nothing and pads nothing)."""
    cfg = facts.config
    missing = partial_kinds(facts)
    r, out = cfg.r, {}
    for kind in spec.kinds(facts):
        mods = [m for m in facts.modules if kind_of(m.path, (kind,)) and m.kind != "embedding"]
        if not mods or kind.rsplit(".", 1)[-1] in missing:
            continue
        s = cfg.lora_alpha / (math.sqrt(r) if cfg.use_rslora and spec.rslora else r)
        out.update((m.path, s) for m in mods)
        first = min(mods, key=lambda m: (m.layer is None, m.layer or 0))
        r = padded_rank(first.r, ctx.world_size)
    return out


UNUSED_WORDS = '"unused adapter weights" warning'


def _scaling(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    scales = punica_scales(spec, facts, ctx)
    changed = scale_changes(facts, lambda m: scales.get(m.path, m.scaling))
    if not changed:
        return []
    cfg, out = facts.config, []
    padded = [(m, s) for m, s in changed if _pad_changed(m, s, cfg)]
    other = [(m, s) for m, s in changed if not _pad_changed(m, s, cfg)]
    if padded:
        out.append(
            spec.namer.finding(
                "rank_padding",
                "changes",
                describe_scales(
                    padded,
                    f"rank padding changes the scale (pad_rank pads r={cfg.r} to "
                    f"{padded_rank(cfg.r, ctx.world_size)} at world size {ctx.world_size} for "
                    "the SGMV kernels and sets config.r to it after the first module kind, so "
                    "later kinds are scaled by lora_alpha / padded r)",
                ),
                spec.pad,
                "convert",
                kind=SCALE,
            )
        )
    if other:
        what = "rank_pattern/alpha_pattern ignored"
        if cfg.use_rslora and not spec.rslora:
            what = "rsLoRA ignored (PEFT 0.4's LoraConfig has no use_rslora)"
        out.append(
            spec.namer.finding(
                "scaling",
                "changes",
                describe_scales(
                    other,
                    f"{what} (every module is scaled get_scaling_factor(lora_alpha="
                    f"{cfg.lora_alpha:g}, r={cfg.r}"
                    f"{', rsLoRA' if cfg.use_rslora and spec.rslora else ''}))",
                ),
                (spec.rslora_source or spec.lora) if cfg.use_rslora and not spec.rslora else spec.lora,
                "convert",
                kind=SCALE,
            )
        )
    return out


def _stacked_ranks(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    ranks: dict[str, set[int]] = defaultdict(set)
    for m in facts.modules:
        ranks[m.name].add(m.r)
    mixed = {k: sorted(v) for k, v in ranks.items() if len(v) > 1}
    if not mixed:
        return []
    name, rs = next(iter(mixed.items()))
    return [
        spec.namer.finding(
            "stacked_ranks",
            "refuses",
            f"{name} has ranks {rs} in different layers; the "
            'loader stacks one module kind over all layers (torch.stack: "stack expects '
            'each tensor to be equal size")',
            spec.lora,
            "convert",
            kind=SCALE,
        )
    ]


def _partial(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    missing = partial_kinds(facts)
    if not missing:
        return []
    name, layers = next(iter(missing.items()))
    return [
        spec.namer.finding(
            "partial_layers",
            "changes",
            f"{', '.join(sorted(missing))} adapted in some "
            f"layers only ({name} missing in layers {layers[:8]}): the loader returns no "
            "weights for a module kind that a layer lacks, so those modules are not "
            "applied in any layer",
            spec.lora,
            "convert",
        )
    ]


def _dora(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not facts.config.use_dora:
        return []
    return [
        spec.namer.finding(
            "dora",
            "changes",
            "DoRA is not read: lora_magnitude_vector tensors are not lora_A/lora_B weights "
            f"of a target layer, so they are left unused (logged in the {UNUSED_WORDS}, no "
            "DoRA-specific message) and the adapter runs as plain LoRA",
            spec.unused,
            "base",
        )
    ]


def _ignored(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    names = [t.key for t in facts.full_tensors if t.role != "frozen_copy"]
    names += [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
    names += [m.path + ".lora_embedding_A" for m in facts.modules if m.kind == "embedding"]
    names += [f"{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
    if not names:
        return []
    return [
        spec.namer.finding(
            "unused_tensors",
            "changes",
            f"{len(names)} tensors are not lora_A/lora_B "
            f"weights of a linear layer and are left unused ({UNUSED_WORDS}), e.g. "
            f"{names[0]}",
            spec.unused,
            "drop",
        )
    ]


def _layer_names(spec: Punica, facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    kinds = spec.kinds(facts)
    odd = [m.path for m in facts.modules if m.kind != "embedding" and not _loads(spec, m, kinds)]
    if not odd:
        return []
    mt = facts.base.model_type if facts.base else None
    where = f"{mt} models" if mt in spec.layers else "Llama-family models"
    how = (
        " at the paths model.layers.<i>.self_attn.<name> / model.layers.<i>.mlp.<name>" if spec.paths else ""
    )
    every = " (every adapted module: the adapter is a no-op)" if len(odd) == len(facts.modules) else ""
    return [
        spec.namer.finding(
            "adapter_layers",
            "changes",
            f"{len(odd)} modules are not among the layers "
            f"{spec.engine} attaches LoRA to ({', '.join(kinds)}{how}; {where}), their "
            f"tensors are left unused ({UNUSED_WORDS}){every}, e.g. {odd[0]}",
            spec.layers_source,
            None if spec.paths and every else "drop",
        )
    ]


def punica_rules(spec: Punica) -> tuple[Rule, ...]:
    """The rules of the LoRAX adapter loader, for LoRAX and for its copy in TGI."""
    engine, lora, unused, rule = spec.engine, spec.lora, spec.unused, spec.namer.rule

    scaling = functools.partial(_scaling, spec)
    stacked_ranks = functools.partial(_stacked_ranks, spec)
    partial = functools.partial(_partial, spec)
    dora = functools.partial(_dora, spec)
    ignored = functools.partial(_ignored, spec)
    layer_names = functools.partial(_layer_names, spec)

    rs = "rsLoRA honoured" if spec.rslora else "rsLoRA ignored"
    return (
        rule(
            "scaling",
            lora,
            f"one scale from the config's r and lora_alpha ({rs}, patterns ignored); ranks "
            "padded for SGMV after the first module kind rescale the later kinds",
            scaling,
        ),
        rule("stacked_ranks", lora, "one rank per module kind across layers", stacked_ranks),
        rule("partial_layers", lora, "a module kind missing in a layer is dropped everywhere", partial),
        rule("dora", unused, "DoRA magnitudes unused", dora),
        rule("unused_tensors", unused, "full tensors, lora_bias, embedding LoRA, token rows unused", ignored),
        rule(
            "adapter_layers",
            spec.layers_source,
            "LoRA only on the model's adapter layers" + (" (fixed paths)" if spec.paths else ""),
            layer_names,
        ),
        init_rule(engine, lora, {"lorax": "LoRAX", "tgi": "TGI"}.get(engine, engine)),
        unmatched_rule(
            engine, unused, "changes", lambda missing: f"their tensors are left unused ({UNUSED_WORDS})"
        ),
    )


def _pad_changed(m: ModuleFacts, s: float, cfg) -> bool:
    """A scale that differs from the config's own alpha/r: the padded r at work."""
    return not math.isclose(s, cfg.lora_alpha / cfg.r, rel_tol=1e-6) and not math.isclose(
        s, cfg.lora_alpha / math.sqrt(cfg.r), rel_tol=1e-6
    )


def _loads(spec: Punica, m: ModuleFacts, kinds: tuple[str, ...]) -> bool:
    if kind_of(m.path, kinds) is None:
        return False
    if not spec.paths:
        return True
    if m.name == "lm_head":
        return m.path == "lm_head" and "lm_head" in kinds
    sub = "self_attn" if m.name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj") else "mlp"
    return m.layer is not None and m.path == f"model.layers.{m.layer}.{sub}.{m.name}"


SPEC = Punica(
    engine=LORAX.name,
    lora=LORA,
    pad=SGMV,
    unused=MODEL,
    layers=ADAPTER_LAYERS,
    default_layers=LLAMA_LAYERS,
    layers_source=MODELS,
    rslora=False,
    rslora_source=PYPROJECT,
)

ENGINE = LORAX.engine(title="LoRAX", caps=CAPS, rules=punica_rules(SPEC))
