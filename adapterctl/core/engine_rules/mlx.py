"""mlx-lm 0.32.2: which PEFT LoRA adapters its adapter format can carry as trained.

mlx-lm does not read PEFT folders: ``mlx_lm/tuner/utils.py`` ``load_adapters`` reads its own
``adapters.safetensors`` and an adapter_config.json with ``fine_tune_type`` (lora | dora | full),
``num_layers`` and ``lora_parameters`` = {rank, scale, keys}, so every PEFT adapter goes through
a format conversion first (adapterctl's MLX export). These rules say what that format can hold
exactly: ``linear_to_lora_layers`` builds every LoRA layer with the one ``rank`` and the one
``scale`` (``tuner/lora.py``: ``y + scale * (x @ lora_a) @ lora_b``), DoRA layers only on Linear
and Embedding (``tuner/dora.py``), and ``load_adapters`` accepts only ``lora_a``, ``lora_b`` and
``m`` leaves of LoRA layers ("not an adapter parameter in the model") of the right shape
("adapter shape ... does not match model parameter shape"). ``linear_to_lora_layers`` converts
Linear, SwitchLinear (MoE experts: no DoRA, "SwitchLinear doesn't support DoRA yet.") and
Embedding only ("Can't convert layer of type ... to LoRA"); on a tied base the model has no
lm_head module and the logits are ``embed_tokens.as_linear``, which ``LoRAEmbedding.as_linear``
(``tuner/lora.py``) extends with the embedding LoRA. The layer-kind and tied-base rules are
executed (tests/interop/test_mlx_rules.py runs mlx-lm 0.32.2's code on those cases); the others are
read from it (tests/interop/test_mlx_lm.py runs mlx-lm on the MLX exports).
"""

from __future__ import annotations

from adapterctl.core.engine_rules.facts import AdapterFacts, is_lm_head_name
from adapterctl.core.engine_rules.rules import (
    SCALE,
    Caps,
    CheckContext,
    Finding,
    Namer,
    fmt_scale,
    init_rule,
    tensor_fix,
    unmatched_rule,
    worst_fix,
)

VERSION = "0.32.2"
MLX = Namer("mlx", VERSION, "mlx-lm")
UTILS = MLX.source("mlx_lm/tuner/utils.py")
LORA = MLX.source("mlx_lm/tuner/lora.py")
# executed: tests/interop/test_mlx_rules.py runs linear_to_lora_layers on these cases
LAYERS = MLX.source("mlx_lm/tuner/utils.py", "executed")
AS_LINEAR = MLX.source("mlx_lm/tuner/lora.py", "executed")

CAPS = Caps(
    rank_pattern=False,
    dora=True,
    lora_bias=False,
    embedding_lora=True,
    lm_head_lora=True,
)


def _ranks(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    ranks = sorted({m.r for m in facts.modules})
    if len(ranks) <= 1:
        return []
    m = next(m for m in facts.modules if m.r != facts.max_rank)
    return [
        MLX.finding(
            "one_rank",
            "refuses",
            f"modules have ranks {ranks}, mlx-lm builds every LoRA "
            f'layer with one lora_parameters.rank: "adapter shape {list(m.a_shape[::-1])} '
            'does not match model parameter shape" for ' + m.path,
            UTILS,
            "convert",
            kind=SCALE,
        )
    ]


def _scales(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    scales = sorted({round(m.scaling, 9) for m in facts.modules})
    if len(scales) <= 1:
        return []
    return [
        MLX.finding(
            "one_scale",
            "changes",
            f"modules use {len(scales)} different scales "
            f"({fmt_scale(scales[0])} .. {fmt_scale(scales[-1])}, rank/alpha patterns), "
            "mlx-lm applies the one lora_parameters.scale to every LoRA layer",
            LORA,
            "convert",
            kind=SCALE,
        )
    ]


def _layer_kinds(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """linear_to_lora_layers: LoRA on Linear, SwitchLinear (MoE experts) and Embedding only, and
    no DoRA on SwitchLinear."""
    conv = [m.path for m in facts.modules if m.kind == "conv"]
    if conv:
        return [
            MLX.finding(
                "layer_kinds",
                "refuses",
                f"Can't convert layer of type Conv to LoRA ({conv[0]}; {len(conv)} convolution "
                "modules: linear_to_lora_layers converts Linear, SwitchLinear and Embedding only)",
                LAYERS,
                "drop",
            )
        ]
    experts = [m.path for m in facts.modules if m.dora and ".experts." in f".{m.path}."]
    if experts:
        return [
            MLX.finding(
                "layer_kinds",
                "refuses",
                f"SwitchLinear doesn't support DoRA yet. ({experts[0]}: mlx-lm holds MoE experts "
                "in one SwitchLinear)",
                LAYERS,
                "base",
            )
        ]
    return []


def _tied(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """On a tied base mlx-lm's model has no lm_head module (the logits are
    ``embed_tokens.as_linear``), and ``LoRAEmbedding.as_linear`` adds the embedding LoRA to the
    logits too, which PEFT does not (its lm_head keeps the base table)."""
    if not (facts.base and facts.base.tie_word_embeddings):
        return []
    out = []
    heads = [m.path for m in facts.modules if is_lm_head_name(m.path)]
    if heads:
        out.append(
            MLX.finding(
                "tied_lm_head",
                "refuses",
                f"{heads[0]}.lora_a: not an adapter parameter in the model ({facts.base_name} ties "
                "lm_head to the embeddings, so mlx-lm's model has no lm_head module)",
                LAYERS,
                "drop",
            )
        )
    embs = [m.path for m in facts.modules if m.kind == "embedding"]
    if embs:
        out.append(
            MLX.finding(
                "tied_embedding",
                "changes",
                f"{embs[0]}: on a tied base the logits are embed_tokens.as_linear, and "
                "LoRAEmbedding.as_linear adds the embedding LoRA there too; PEFT applies it to the "
                "input lookup only",
                AS_LINEAR,
            )
        )
    return out


def _extras(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    full = [t for t in facts.full_tensors if t.role != "frozen_copy"]
    names = [t.key for t in full] + [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
    names += [f"{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
    if not names:
        return []
    fixes = [tensor_fix(t, CAPS, facts) for t in full] + ["drop"] * sum(m.lora_bias for m in facts.modules)
    fixes += ["base"] * len(facts.trainable_tokens)
    return [
        MLX.finding(
            "not_adapter_parameters",
            "refuses",
            f"{names[0]}: not an adapter parameter in "
            f"the model ({len(names)} tensors other than lora_a/lora_b/m)",
            UTILS,
            worst_fix(fixes),
        )
    ]


ENGINE = MLX.engine(
    title="MLX (mlx-lm)",
    caps=CAPS,
    note="mlx-lm reads its own adapter format; the verdict is for the adapter after a faithful "
    "format conversion",
    rules=(
        MLX.rule("one_rank", UTILS, "one rank for every LoRA layer", _ranks),
        MLX.rule("one_scale", LORA, "one scale for every LoRA layer", _scales),
        MLX.rule(
            "layer_kinds",
            LAYERS,
            "LoRA on Linear, SwitchLinear and Embedding only; no DoRA on SwitchLinear",
            _layer_kinds,
        ),
        MLX.rule("tied", LAYERS, "tied base: no lm_head module; embedding LoRA reaches the logits", _tied),
        MLX.rule("not_adapter_parameters", UTILS, "only lora_a, lora_b and m tensors load", _extras),
        init_rule(MLX.name, UTILS, "mlx-lm"),
        unmatched_rule(
            MLX.name,
            UTILS,
            "refuses",
            lambda missing: f"{missing[0]}.lora_a: not an adapter parameter in the model",
        ),
    ),
)
