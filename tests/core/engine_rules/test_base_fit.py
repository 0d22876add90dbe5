"""core/engine_rules/base_fit.py: does an adapter land in the base at all, and through which
text <-> VLM mapping (from headers: the example base and adapters described by their shapes)."""

from __future__ import annotations

import pytest

from adapterctl.core.engine_rules.base_fit import check_base_fit, mapping_note
from adapterctl.errors import IncompatibleBaseError
from tests.core.engine_rules.test_rules import P, facts, lora

VLM_KEYS = "base_model.model.model.language_model.layers"
TOWER = {
    "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight": (8, 32),
    "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_B.weight": (32, 8),
}


def test_an_adapter_saved_for_this_layout_needs_no_mapping(base):
    assert check_base_fit(facts(base=base)) is None


def test_without_a_base_there_is_nothing_to_check():
    assert check_base_fit(facts()) is None


def test_a_vlm_adapter_on_its_text_extraction_is_mapped_and_the_engines_no_op_said(base):
    f = facts(shapes=lora(prefix=VLM_KEYS), base=base)
    mapping = check_base_fit(f)
    assert mapping is not None and mapping.describe() == "vlm -> text (model.language_model.* -> model.*)"
    note = mapping_note(f, mapping)
    assert note.startswith("adapter: adapterctl attach, merge and generate map its module paths vlm -> text")
    assert "as saved they match no module of the base" in note and "silent no-op" in note


def test_an_adapter_none_of_whose_modules_exists_is_refused_exit_6(base):
    foo = {f"{P}.0.self_attn.foo.lora_A.weight": (8, 192), f"{P}.0.self_attn.foo.lora_B.weight": (192, 8)}
    with pytest.raises(IncompatibleBaseError, match="none of its 1 LoRA modules exist in examples/tiny-base") as err:
        check_base_fit(facts({"target_modules": ["foo"]}, foo, base))
    assert err.value.exit_code == 6


def test_vision_modules_on_a_text_only_base_are_refused(base):
    f = facts(shapes={**lora(prefix=VLM_KEYS), **TOWER}, base=base)
    with pytest.raises(IncompatibleBaseError, match="on the vision side .* is a text-only model"):
        check_base_fit(f)
