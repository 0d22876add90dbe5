"""core/engine_rules/sglang.py: SGLang 0.5.23's verdicts on small adapters (headers only), for
the rules tests/core/engine_rules/test_rules.py leaves out."""

from __future__ import annotations

from adapterctl.core.engine_rules import sglang
from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict


def test_a_mutated_init_changes_the_output_with_the_base_as_fix(base):
    v, f = verdict("sglang", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "changes" and f[0].rule == "sglang.init" and f[0].fix == "base"


def test_lora_bias_tensors_inside_a_layer_are_refused(base):
    """Executed in tests/interop/test_sglang_rules.py: SGLang places them like LoRA weights and
    finds no target module for them (ValueError at the first batch)."""
    v, f = verdict("sglang", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "refuses" and f[0].rule == "sglang.in_layer_tensors"
    assert "8 such tensors" in messages(f)


def test_a_module_it_cannot_size_is_refused(base):
    """get_hidden_dim has no size for an unknown module (NotImplementedError, executed in
    tests/interop/test_sglang_rules.py); that the base lacks it is said too."""
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    v, f = verdict("sglang", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **foo}, base))
    assert v == "refuses" and [x.rule for x in f] == ["sglang.unknown_modules", "sglang.no_such_module"]


def test_variants_vllm_refuses_are_no_finding_here(base):
    """SGLang's lora_config.py reads none of these keys: nothing to refuse or change."""
    assert verdict("sglang", facts({"use_qalora": True}, base=base)) == ("serves", [])


def test_caps_say_what_convert_for_sglang_must_remove():
    caps = sglang.ENGINE.caps
    assert not caps.rank_pattern and not caps.dora and not caps.lora_bias and not caps.pad_rank
