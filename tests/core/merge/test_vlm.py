"""Merging across vision-language wrappers and their text-only extractions: the output loads in
transformers and equals PEFT's merge_and_unload on the same base, with the adapter renamed by hand
for the other layout (the oracle), parameter by parameter in float32 within 1e-5."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import invoke
from tests.vlm_fixtures import (
    KINDS,
    LANGUAGE_ONLY,
    TEXT_TO_VLM,
    VLM_KINDS,
    VLM_TO_TEXT,
    load_any,
    rename_adapter,
)

TEXT_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def peft_merged(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_any(base), str(adapter)).merge_and_unload()


def merge(base, adapter, out):
    res = invoke("--json", "merge", base, adapter, "--output", out)
    assert res.code == 0, res.stderr
    return res


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_vlm_adapter_into_its_vlm(vlm_models, kind, tmp_path):
    """With LoRA on the vision tower too: every tensor, not only what a text prompt reaches."""
    vlm, _ = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=["q_proj", "v_proj", "qkv", "down_proj"])
    res = merge(vlm, adapter, tmp_path / "out")
    assert res.json["plan"]["adapters"][0]["key_mapping"] is None
    touched = [t["key"] for t in res.json["plan"]["touched"]]
    assert any(k.startswith(("vision_tower.", "visual.", "vision_model.")) for k in touched)
    assert max_diff(load_any(tmp_path / "out"), peft_merged(vlm, adapter)) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_vlm_adapter_into_the_text_extraction(vlm_models, kind, tmp_path):
    _, text = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=LANGUAGE_ONLY)
    res = merge(text, adapter, tmp_path / "out")
    mapping = res.json["plan"]["adapters"][0]["key_mapping"]
    assert mapping == {"from": "vlm", "to": "text", "rules": ["model.language_model.* -> model.*"]}
    assert "module paths mapped vlm -> text (model.language_model.* -> model.*)" in res.stderr
    oracle = rename_adapter(adapter, tmp_path / "renamed", *VLM_TO_TEXT, TEXT_TARGETS)
    assert max_diff(load_any(tmp_path / "out"), peft_merged(text, oracle)) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_text_adapter_into_the_vlm(vlm_models, kind, tmp_path):
    vlm, _ = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, on="text", target_modules=TEXT_TARGETS)
    res = merge(vlm, adapter, tmp_path / "out")
    assert res.json["plan"]["adapters"][0]["key_mapping"]["to"] == "vlm"
    oracle = rename_adapter(adapter, tmp_path / "renamed", *TEXT_TO_VLM, LANGUAGE_ONLY)
    assert max_diff(load_any(tmp_path / "out"), peft_merged(vlm, oracle)) <= 1e-5


def test_vision_adapter_into_the_text_extraction_is_refused(vlm_models, tmp_path):
    _, text = vlm_models.pair("llava")
    adapter = vlm_models.adapter("llava", target_modules=["q_proj", "v_proj", "qkv", "down_proj"])
    res = invoke("--json", "merge", text, adapter, "--output", tmp_path / "out")
    assert res.code == 6
    err = res.json["error"]
    assert "on the vision side (model.vision_tower.encoder.layers.0." in err["message"]
    assert "is a text-only model" in err["message"] and "vision-language base" in err["hint"]
    assert not (tmp_path / "out").exists()
