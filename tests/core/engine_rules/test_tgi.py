"""core/engine_rules/tgi.py: TGI runs LoRAX's loader with its own sources and adapter layers
(no lm_head); its verdicts on small adapters."""

from __future__ import annotations

from adapterctl.core.engine_rules import lorax, tgi
from tests.core.engine_rules.test_rules import facts, lora, messages, verdict


def test_its_rules_are_loraxs_under_its_own_name_and_sources():
    assert [r.id.split(".", 1)[1] for r in tgi.ENGINE.rules] == [r.id.split(".", 1)[1] for r in lorax.ENGINE.rules]
    assert all(r.source.engine == "tgi" and r.source.version == tgi.ENGINE.version for r in tgi.ENGINE.rules)


def test_one_module_kind_with_two_ranks_is_refused(base):
    v, f = verdict("tgi", facts({"rank_pattern": {"layers.0.self_attn.q_proj": 4}}, lora(ranks={(0, "q_proj"): 4}), base))
    assert v == "refuses" and f[0].rule == "tgi.stacked_ranks"


def test_a_module_kind_missing_in_some_layers_is_dropped_everywhere(base):
    v, f = verdict("tgi", facts({"layers_to_transform": [0, 1]}, lora(layers=[0, 1]), base))
    assert v == "changes" and f[0].rule == "tgi.partial_layers" and "missing in layers [2, 3]" in messages(f)


def test_mlp_modules_are_among_its_adapter_layers(base):
    names = ("q_proj", "v_proj", "gate_proj", "down_proj")
    assert verdict("tgi", facts({"target_modules": list(names)}, lora(names=names), base)) == ("serves", [])
    assert "lm_head" not in tgi.ENGINE.caps.lora_modules and not tgi.ENGINE.caps.lm_head_lora
