"""core/engine_rules/sglang.py: SGLang 0.5.23's verdicts on small adapters (headers only), for
the rules tests/core/engine_rules/test_rules.py leaves out."""

from __future__ import annotations

from adapterctl.core.engine_rules import sglang
from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict


def test_a_mutated_init_changes_the_output_with_the_base_as_fix(base):
    v, f = verdict("sglang", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "changes" and f[0].rule == "sglang.init" and f[0].fix == "base"


def test_lora_bias_tensors_never_reach_its_buffers(base):
    v, f = verdict("sglang", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "changes" and f[0].rule == "sglang.ignored_tensors" and f[0].fix == "drop"
    assert "8 tensors are not lora_A/lora_B weights" in messages(f)


def test_a_module_the_base_lacks_is_skipped(base):
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    v, f = verdict("sglang", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **foo}, base))
    assert v == "changes" and [x.rule for x in f] == ["sglang.no_such_module"]


def test_variants_vllm_refuses_are_no_finding_here(base):
    """SGLang's lora_config.py reads none of these keys: nothing to refuse or change."""
    assert verdict("sglang", facts({"use_qalora": True}, base=base)) == ("serves", [])


def test_caps_say_what_convert_for_sglang_must_remove():
    caps = sglang.ENGINE.caps
    assert not caps.rslora and not caps.rank_pattern and not caps.alpha_pattern and caps.list_targets
