"""TensorRT-LLM (NVIDIA/TensorRT-LLM at 007e181b): which PEFT LoRA adapters its HF LoRA loader
serves as trained. Read from ``tensorrt_llm/lora_manager.py`` (``read``: it needs CUDA and
TensorRT). ``LoraManager.load_from_hf`` matches every tensor name against ``HF_LORA_PATTERN``
(``<prefix>.<layer>.<module prefix>.<module>.lora_A/lora_B.weight`` or ``.lora_magnitude_vector``)
and raises ``KeyError("unsupported key ... from HF LoRA weights")`` for any other name except
those containing lm_head or embed_tokens, which it skips; a module name must be one of
``get_default_trtllm_modules_to_hf_modules`` (q/k/v/o_proj, gate/up/down_proj, gate_up_proj, MoE
w1/w2/w3/gate: else an AssertionError); each module is scaled by ``lora_alpha / r`` (rsLoRA:
``/ sqrt(r)``) with r the rank of its own tensor (rank patterns honoured, alpha patterns not);
DoRA magnitudes are applied, except on MoE experts ("DoRA with MoE is not supported");
``LoraConfig.max_lora_rank`` defaults to 64.
"""

from __future__ import annotations

import math

from adapterctl.core.engine_rules.facts import AdapterFacts, is_embedding_name, is_lm_head_name, layer_of
from adapterctl.core.engine_rules.rules import (
    Caps,
    CheckContext,
    Finding,
    Namer,
    init_rule,
    scale_rule,
    worst_fix,
)

VERSION = "007e181b"
TRTLLM = Namer("trtllm", VERSION)
MANAGER = TRTLLM.source("tensorrt_llm/lora_manager.py")
#: the HF module names get_default_trtllm_modules_to_hf_modules maps
MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj", "gate_up_proj",
    "w1", "w2", "w3", "gate",
)  # fmt: skip
DEFAULT_MAX_LORA_RANK = 64

CAPS = Caps(
    rank_pattern=True,
    dora=True,
    lora_bias=False,
    embedding_lora=False,
    lm_head_lora=False,
    lora_modules=MODULES,
)


def _keys(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """Tensors HF_LORA_PATTERN does not match: KeyError, but for lm_head/embed_tokens (skipped)."""
    bad = [t.key for t in facts.full_tensors if layer_of(t.param) is not None and t.role != "frozen_copy"]
    bad += [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
    bad += list(facts.unknown_keys)
    if not bad:
        return []
    return [
        TRTLLM.finding(
            "unsupported_keys",
            "refuses",
            f"unsupported key {bad[0]} from HF LoRA weights ({len(bad)} tensors other than "
            "lora_A/lora_B weights and DoRA magnitudes)",
            MANAGER,
            worst_fix(["drop"]),
        )
    ]


def _skipped(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    heads = [m.path for m in facts.modules if is_lm_head_name(m.path) or is_embedding_name(m.path)]
    heads += [t.key for t in facts.full_tensors if layer_of(t.param) is None and t.role != "frozen_copy"]
    heads += list(facts.trainable_tokens)
    if not heads:
        return []
    return [
        TRTLLM.finding(
            "embeddings_skipped",
            "changes",
            f"{heads[0]}: tensors naming lm_head or embed_tokens are skipped by the runtime LoRA "
            f"loader ({len(heads)} such; a modules_to_save lm_head/embed_tokens only takes effect "
            "when the engine is built with that one adapter, load_hf_lora)",
            MANAGER,
            "drop",
        )
    ]


def _modules(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    odd = sorted(
        {m.name for m in facts.modules if not (is_lm_head_name(m.path) or is_embedding_name(m.path))}
        - set(MODULES)
    )
    if not odd:
        return []
    return [
        TRTLLM.finding(
            "modules",
            "refuses",
            f"hf_module {odd[0]} is not in supported list {sorted(MODULES)} (AssertionError)",
            MANAGER,
            "drop",
        )
    ]


def _dora_moe(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not any(m.dora and ".experts." in f".{m.path}." for m in facts.modules):
        return []
    return [TRTLLM.finding("dora_moe", "refuses", "DoRA with MoE is not supported", MANAGER, "base")]


def _rank(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    rank = facts.max_rank
    if rank <= DEFAULT_MAX_LORA_RANK:
        return []
    return [
        TRTLLM.finding(
            "max_lora_rank",
            "flag",
            f"rank {rank} is above LoraConfig's default max_lora_rank {DEFAULT_MAX_LORA_RANK}",
            MANAGER,
            flags=(f"max_lora_rank={rank}",),
        )
    ]


def _scale(facts: AdapterFacts, m) -> float:
    cfg = facts.config
    return cfg.lora_alpha / (math.sqrt(m.r) if cfg.use_rslora else m.r)


ENGINE = TRTLLM.engine(
    title="TensorRT-LLM",
    caps=CAPS,
    rules=(
        TRTLLM.rule(
            "unsupported_keys", MANAGER, "tensors other than lora_A/B and DoRA magnitudes: KeyError", _keys
        ),
        TRTLLM.rule(
            "embeddings_skipped", MANAGER, "lm_head/embed_tokens tensors skipped at runtime", _skipped
        ),
        TRTLLM.rule("modules", MANAGER, "module names outside its HF mapping: AssertionError", _modules),
        TRTLLM.rule("dora_moe", MANAGER, "DoRA on MoE experts: ValueError", _dora_moe),
        TRTLLM.rule("max_lora_rank", MANAGER, "ranks above max_lora_rank (default 64)", _rank),
        scale_rule(
            TRTLLM.name,
            MANAGER,
            "lora_alpha / each tensor's rank (rsLoRA: / sqrt): alpha patterns ignored",
            _scale,
            lambda facts: (
                f"alpha_pattern ignored (TensorRT-LLM scales every module by lora_alpha="
                f"{facts.config.lora_alpha:g} over its rank)"
            ),
        ),
        init_rule(TRTLLM.name, MANAGER, "TensorRT-LLM"),
    ),
)
