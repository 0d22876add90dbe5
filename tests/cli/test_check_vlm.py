"""check and inspect --base across vision-language wrappers and their text-only extractions:
the mapping attach/merge would use is named (JSON and stderr), a VLM adapter on its own VLM
checkpoint (saved in the legacy layout) is found, and an adapter that lands nowhere (the silent
no-op) or puts vision modules on a text-only base is refused with exit 6."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import invoke, write_adapter
from tests.vlm_fixtures import LANGUAGE_ONLY, VLM_KINDS

VISION = ["q_proj", "v_proj", "qkv", "down_proj"]


def test_check_names_the_mapping_onto_the_text_extraction(vlm_models):
    _, text = vlm_models.pair("llava")
    adapter = vlm_models.adapter("llava", target_modules=LANGUAGE_ONLY)
    res = invoke("--json", "check", adapter, "--base", text, "--engine", "vllm")
    assert res.json["key_mappings"] == {str(adapter): {
        "from": "vlm", "to": "text", "rules": ["model.language_model.* -> model.*"]}}
    assert "map its module paths vlm -> text (model.language_model.* -> model.*)" in res.stderr
    assert "as saved they match no module of the base" in res.stderr
    # vLLM reads the keys as saved: on a plain Llama they land nowhere (vllm/lora/model_manager.py)
    assert res.code == 10 and res.json["results"][0]["verdict"] == "changes"


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_check_and_inspect_find_a_vlm_adapter_in_its_own_checkpoint(vlm_models, kind):
    """transformers writes Llava/Gemma-3 as language_model.model.*, Qwen2.5-VL as model.layers.*
    + visual.*; the adapter says model.language_model.* (vLLM maps the same way: llava.py's
    hf_to_vllm_mapper)."""
    vlm, _ = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=VISION)
    res = invoke("--json", "check", adapter, "--base", vlm, "--engine", "vllm")
    assert res.json["key_mappings"] == {str(adapter): None}
    reasons = [r["message"] for r in res.json["results"][0]["reasons"]]
    assert not any("match no module" in m for m in reasons), reasons
    ins = invoke("--json", "inspect", adapter, "--base", vlm)
    assert ins.code == 0 and ins.json["base"]["compatible"] and ins.json["base"]["key_mapping"] is None
    assert all(m["base_shape"] for m in ins.json["modules"])


def test_inspect_names_the_mapping_and_refuses_vision_modules_on_text(vlm_models):
    _, text = vlm_models.pair("gemma3")
    ins = invoke("--json", "inspect", vlm_models.adapter("gemma3", target_modules=LANGUAGE_ONLY),
                 "--base", text)
    assert ins.code == 0 and ins.json["base"]["compatible"]
    assert ins.json["base"]["key_mapping"]["rules"] == ["model.language_model.* -> model.*"]
    ins = invoke("--json", "inspect", vlm_models.adapter("gemma3", target_modules=VISION),
                 "--base", text)
    assert not ins.json["base"]["compatible"]
    codes = [p["code"] for p in ins.json["problems"]]
    assert "vision_modules_on_text_base" in codes


def test_check_refuses_vision_modules_on_the_text_extraction(vlm_models):
    _, text = vlm_models.pair("qwen2_5_vl")
    adapter = vlm_models.adapter("qwen2_5_vl", target_modules=VISION)
    res = invoke("--json", "check", adapter, "--base", text)
    assert res.code == 6
    assert "on the vision side (model.visual.blocks.0.attn.qkv" in res.json["error"]["message"]


def test_check_refuses_the_silent_no_op(vlm_models, tmp_path):
    """A GPT-2 adapter on a Llama: no module lands; PEFT would load it and change nothing."""
    _, text = vlm_models.pair("llava")
    tensors = {}
    for i in range(2):
        key = f"base_model.model.transformer.h.{i}.attn.c_attn"
        tensors[f"{key}.lora_A.weight"] = torch.ones(4, 64)
        tensors[f"{key}.lora_B.weight"] = torch.ones(192, 4)
    folder = write_adapter(tmp_path / "gpt2-lora", {"r": 4, "target_modules": ["c_attn"]}, tensors)
    res = invoke("--json", "check", folder, "--base", text)
    assert res.code == 6, res.stdout
    err = res.json["error"]
    assert err["type"] == "incompatible_base"
    assert "none of its 2 LoRA modules exist in" in err["message"]
    assert "e.g. transformer.h.0.attn.c_attn" in err["message"]
    assert "the base has weights like lm_head.weight, model.embed_tokens.weight" in err["message"]


def test_vllm_applies_tower_lora_only_with_its_flag_and_model(vlm_models):
    """vllm/lora/model_manager.py: tower/projector modules get no LoRA wrapper without
    --enable-tower-connector-lora, nor on a model class without supports_tower_connector_lora."""
    for kind, verdict in (("llava", "serves"), ("gemma3", "changes")):
        vlm, _ = vlm_models.pair(kind)
        adapter = vlm_models.adapter(kind, target_modules=VISION)
        res = invoke("--json", "check", adapter, "--base", vlm, "--engine", "vllm")
        result = res.json["results"][0]
        assert result["verdict"] == verdict, result
        tower = [r for r in result["reasons"] if r["rule"] == "vllm.tower_lora"]
        assert tower and "on the vision tower / projector" in tower[0]["message"]
        if kind == "llava":
            assert result["flags"] == ["--enable-tower-connector-lora"] and res.code == 0
        else:
            assert "does not support LoRA on its tower" in tower[0]["message"] and res.code == 10
    text_only = vlm_models.adapter("llava", target_modules=LANGUAGE_ONLY)
    res = invoke("--json", "check", text_only, "--base", vlm_models.pair("llava")[0], "-e", "vllm")
    assert res.code == 0 and res.json["results"][0]["flags"] == []
