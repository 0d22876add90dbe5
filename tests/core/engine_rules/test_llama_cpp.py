"""core/engine_rules/llama_cpp.py: llama.cpp's converter and adapter loader on small adapters,
for the rules tests/core/engine_rules/test_rules.py leaves out (the real converter proves them in
tests/interop/test_llama_cpp_gguf.py)."""

from __future__ import annotations

from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict


def test_a_module_the_base_lacks_stops_the_converter(base):
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    v, f = verdict("llama.cpp", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **foo}, base))
    assert v == "refuses" and [x.rule for x in f] == ["llama.cpp.no_such_module"]
    assert "Can not map tensor 'model.layers.0.self_attn.foo.weight'" in messages(f)


def test_a_mutated_init_is_not_read_by_the_converter(base):
    v, f = verdict("llama.cpp", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "changes" and f[0].rule == "llama.cpp.init" and "reads no init_lora_weights" in messages(f)


def test_every_projection_of_the_llama_base_maps(base):
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert verdict("llama.cpp", facts({"target_modules": list(names)}, lora(names=names), base)) == ("serves", [])
