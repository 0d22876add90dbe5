"""core/engine_rules/mlx.py: what mlx-lm 0.32.2's adapter format carries, on small adapters, for
the rules tests/core/engine_rules/test_rules.py leaves out (the real mlx-lm proves them in
tests/interop/test_mlx_lm.py)."""

from __future__ import annotations

from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict


def test_lora_bias_is_not_an_adapter_parameter(base):
    v, f = verdict("mlx", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "refuses" and f[0].rule == "mlx.not_adapter_parameters" and f[0].fix == "drop"
    assert "(8 tensors other than lora_a/lora_b/m)" in messages(f)


def test_a_module_the_base_lacks_is_refused_on_load(base):
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    v, f = verdict("mlx", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **foo}, base))
    assert v == "refuses" and [x.rule for x in f] == ["mlx.no_such_module"]
    assert "model.layers.0.self_attn.foo.lora_a: not an adapter parameter" in messages(f)


def test_a_mutated_init_changes_the_output(base):
    v, f = verdict("mlx", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "changes" and f[0].rule == "mlx.init" and f[0].fix == "base"


def test_dora_on_linear_layers_is_served(base):
    assert verdict("mlx", facts({"use_dora": True, "use_rslora": True}, lora(dora=True), base)) == ("serves", [])
