"""core/engine_rules/lorax.py: LoRAX's loader rules (shared with TGI through ``punica_rules``)
on small adapters, for the rules tests/core/engine_rules/test_rules.py leaves out."""

from __future__ import annotations

import dataclasses

from adapterctl.core.engine_rules import lorax
from adapterctl.core.engine_rules.rules import Source
from tests.core.engine_rules.test_rules import P, facts, lora, messages, verdict

FOO = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}


def test_a_module_outside_its_layers_is_unused_three_ways(base):
    """foo: not among LoRAX's adapter layers, in layer 0 only, and not in the base."""
    v, f = verdict("lorax", facts({"target_modules": ["q_proj", "v_proj", "foo"]}, {**lora(), **FOO}, base))
    assert v == "changes"
    assert [x.rule for x in f] == ["lorax.partial_layers", "lorax.adapter_layers", "lorax.no_such_module"]
    assert "1 modules are not among the layers lorax attaches LoRA to" in messages(f)
    assert "foo missing in layers [1, 2, 3]" in messages(f)


def test_lora_bias_is_left_unused_with_its_warning(base):
    v, f = verdict("lorax", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "changes" and f[0].rule == "lorax.unused_tensors" and f[0].fix == "drop"
    assert '"unused adapter weights" warning' in messages(f)


def test_a_mutated_init_changes_the_output(base):
    v, f = verdict("lorax", facts({"init_lora_weights": "olora"}, base=base))
    assert v == "changes" and [x.rule for x in f] == ["lorax.init"] and f[0].fix == "base"


def test_punica_rules_name_their_engine_and_cite_its_sources():
    src = Source("x", "1", "loader.py")
    other = Source("x", "1", "model.py")
    spec = dataclasses.replace(lorax.SPEC, engine="x", lora=src, pad=src, unused=other, layers_source=other)
    rules = lorax.punica_rules(spec)
    assert [r.id for r in rules] == [r.id.replace("lorax.", "x.", 1) for r in lorax.ENGINE.rules]
    assert {r.source for r in rules} <= {src, other}


def test_its_layers_are_the_llama_adapter_layers_with_lm_head():
    assert lorax.ENGINE.caps.lora_modules == lorax.LLAMA_LAYERS and "lm_head" in lorax.LLAMA_LAYERS
