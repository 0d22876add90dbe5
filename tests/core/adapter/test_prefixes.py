"""The one prefix rule between text-only and vision-language layouts (core/adapter/prefixes.py)."""

from __future__ import annotations

import pytest

from adapterctl.core.adapter import prefixes as PX

Q = "layers.0.self_attn.q_proj"


@pytest.mark.parametrize("names, layout", [
    ([f"model.{Q}", "lm_head"], PX.TEXT),
    ([f"model.language_model.{Q}", "model.vision_tower.encoder.layers.0.fc1"], PX.VLM),
    ([f"language_model.model.{Q}", "language_model.lm_head"], PX.VLM_LEGACY),
    ([f"model.{Q}", "visual.blocks.0.attn.qkv"], PX.TEXT_VISUAL),  # Qwen2.5-VL checkpoints
    (["model.vision_tower.encoder.layers.0.fc1"], PX.VLM),
    (["vision_tower.encoder.layers.0.fc1"], PX.VLM_LEGACY),
    (["transformer.h.0.attn.c_attn"], None),  # GPT-2: nothing to map
])
def test_detect_layout(names, layout):
    assert PX.detect_layout(names) == layout


def test_runtime_layout_is_vlm_for_every_vision_checkpoint():
    assert PX.runtime_layout(PX.VLM_LEGACY) == PX.VLM
    assert PX.runtime_layout(PX.TEXT_VISUAL) == PX.VLM
    assert PX.runtime_layout(PX.TEXT) == PX.TEXT


def test_vlm_adapter_on_text_base_and_back():
    m = PX.choose_mapping([f"model.language_model.{Q}", "lm_head"], PX.TEXT)
    assert m is not None and m.to_dict() == {"from": "vlm", "to": "text",
                                             "rules": ["model.language_model.* -> model.*"]}
    assert m.map(f"model.language_model.{Q}") == f"model.{Q}"
    assert m.map("lm_head") == "lm_head"
    assert m.map("model.multi_modal_projector.linear_1") is None
    back = PX.choose_mapping([f"model.{Q}", "model.embed_tokens"], PX.VLM)
    assert back.map(f"model.{Q}") == f"model.language_model.{Q}"
    assert back.map("model.embed_tokens") == "model.language_model.embed_tokens"
    assert back.describe() == "text -> vlm (model.* -> model.language_model.*)"


def test_legacy_adapter_on_current_vlm():
    m = PX.choose_mapping([f"language_model.model.{Q}", "language_model.lm_head",
                          "vision_tower.encoder.layers.0.fc1"], PX.VLM)
    assert m.map(f"language_model.model.{Q}") == f"model.language_model.{Q}"
    assert m.map("language_model.lm_head") == "lm_head"
    assert m.map("vision_tower.encoder.layers.0.fc1") == "model.vision_tower.encoder.layers.0.fc1"
    assert m.rules()[-1] == ("(vision_tower|visual|vision_model|multi_modal_projector)* -> "
                             "model.(vision_tower|visual|vision_model|multi_modal_projector)*")
    qwen = PX.choose_mapping([f"model.{Q}", "visual.blocks.0.attn.qkv"], PX.VLM)
    assert qwen.map("visual.blocks.0.attn.qkv") == "model.visual.blocks.0.attn.qkv"


def test_no_mapping_when_layouts_agree_or_names_already_fit():
    assert PX.choose_mapping([f"model.{Q}"], PX.TEXT) is None
    assert PX.choose_mapping(["transformer.h.0.attn.c_attn"], PX.TEXT) is None
    assert PX.choose_mapping([f"model.{Q}"], None) is None
    # a base in which the paths exist as they are needs no rewrite
    assert PX.choose_mapping([f"model.{Q}"], PX.VLM, present=lambda p: p == f"model.{Q}") is None


def test_vision_problem_names_the_modules_and_the_base():
    m = PX.KeyMapping(PX.VLM, PX.TEXT)
    paths = [f"model.language_model.{Q}", "model.vision_tower.encoder.layers.0.self_attn.q_proj"]
    problem = PX.vision_problem(m, paths, "./text-base")
    assert problem.exit_code == 6 and problem.code == "vision_modules_on_text_base"
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj" in problem.message
    assert "./text-base is a text-only model" in problem.message
    assert PX.vision_problem(m, paths[:1], "./text-base") is None
