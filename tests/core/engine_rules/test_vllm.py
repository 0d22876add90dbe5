"""core/engine_rules/vllm.py: vLLM 0.32.0's verdicts on small adapters (headers only), for the
rules tests/core/engine_rules/test_rules.py leaves out; the real engine proves the others in
tests/interop/test_vllm.py."""

from __future__ import annotations

from adapterctl.core.engine_rules import vllm
from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict


def test_variants_peft_helper_refuses_by_name(base):
    values = {
        "use_qalora": True,
        "use_bdlora": {"target_modules_bd_a": [], "target_modules_bd_b": [], "nblocks": 2},
        "layer_replication": [[0, 2]],
    }
    for key, words in (("use_qalora", "QALoRA"), ("use_bdlora", "BD-LoRA"), ("layer_replication", "layer_replication")):
        v, f = verdict("vllm", facts({key: values[key]}, base=base))
        assert v == "refuses" and f[0].rule == "vllm.variant" and words in messages(f), key


def test_a_mutated_init_is_refused_with_the_base_as_its_fix(base):
    v, f = verdict("vllm", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "refuses" and f[0].rule == "vllm.init" and f[0].fix == "base"
    assert "init_lora_weights='olora'" in messages(f)


def test_a_module_the_base_lacks_changes_the_output_and_names_it(base):
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    v, f = verdict("vllm", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **foo}, base))
    assert v == "changes" and [x.rule for x in f] == ["vllm.no_such_module"]
    assert "1 of 9 adapted modules match no module of examples/tiny-base" in messages(f)


def test_max_lora_ranks_are_vllms_allowed_values():
    """vllm/config/lora.py MaxLoRARanks: ascending, ending at 512 (the largest rank it serves)."""
    assert list(vllm.MAX_LORA_RANKS) == sorted(vllm.MAX_LORA_RANKS) and vllm.MAX_LORA_RANKS[-1] == 512
    assert vllm.ENGINE.caps.max_rank == vllm.MAX_LORA_RANKS[-1]


def test_more_modules_on_every_layer_still_serve(base):
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert verdict("vllm", facts({"target_modules": list(names)}, lora(names=names), base)) == ("serves", [])
