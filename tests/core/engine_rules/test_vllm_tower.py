"""core/engine_rules/vllm_tower.py: vLLM 0.32.0 and LoRA on a VLM's vision tower: a flag where
the model class supports it, ignored where it does not, nothing to say without tower modules."""

from __future__ import annotations

from adapterctl.core.adapter.base_info import BaseInfo
from adapterctl.core.engine_rules.rules import CheckContext
from adapterctl.core.engine_rules.vllm_tower import FLAG, TOWER_LORA, tower_lora
from tests.core.engine_rules.test_rules import DIMS, facts, lora, verdict
from tests.core.engine_rules.test_base_fit import TOWER, VLM_KEYS

PARAMS = {
    **{f"model.language_model.layers.{i}.self_attn.{n}.weight": DIMS[n] for i in range(4) for n in ("q_proj", "v_proj")},
    "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight": (32, 32),
    "lm_head.weight": (872, 192),
}


def vlm(model_type: str | None) -> BaseInfo:
    cfg = {"model_type": model_type, "text_config": {"vocab_size": 872, "num_hidden_layers": 4}} if model_type else {}
    return BaseInfo("vlm", cfg, PARAMS)


def tower_facts(model_type):
    return facts(shapes={**lora(prefix=VLM_KEYS), **TOWER}, base=vlm(model_type))


def test_a_model_that_supports_tower_lora_needs_the_flag():
    [f] = tower_lora(tower_facts("llava"), CheckContext())
    assert f.verdict == "flag" and f.flags == (FLAG,) and "LlavaForConditionalGeneration" in f.message
    assert verdict("vllm", tower_facts("llava"))[0] == "serves"


def test_a_model_without_it_ignores_the_tower_modules():
    [f] = tower_lora(tower_facts("gemma3"), CheckContext())
    assert f.verdict == "changes" and not f.flags
    assert "vLLM's model for gemma3 does not support LoRA on its tower" in f.message
    assert verdict("vllm", tower_facts("gemma3"))[0] == "changes"


def test_an_unknown_model_gets_the_flag_with_a_caveat():
    [f] = tower_lora(tower_facts(None), CheckContext())
    assert f.verdict == "flag" and "(the model, if it supports it)" in f.message


def test_no_tower_modules_nothing_to_say(base):
    assert tower_lora(facts(base=base), CheckContext()) == []
    assert "gemma3" not in TOWER_LORA and set(TOWER_LORA) >= {"llava", "qwen2_5_vl"}
