"""Adapters across vision-language wrappers and their text-only extractions, attached by the
engine against PEFT (the oracle, with the adapter renamed by hand for the other layout): same
logits in float32 within 1e-5, and the mapping named in the report (core/adapter/prefixes.py)."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.attach import attach_adapter
from adapterctl.core.runtime.model import Placement, load_base
from adapterctl.errors import IncompatibleBaseError
from tests.helpers import max_abs_diff
from tests.vlm_fixtures import (
    KINDS,
    LANGUAGE_ONLY,
    TEXT_TO_VLM,
    VLM_KINDS,
    VLM_TO_TEXT,
    peft_logits,
    rename_adapter,
)

IDS = torch.tensor([[5, 9, 20, 33, 7, 100, 200, 3, 44, 12]])
TEXT_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def ours(base, adapter):
    lb = load_base(base, Placement(dtype="float32"), tokenizer=False)
    report = attach_adapter(lb.model, str(adapter), "a")
    with torch.no_grad():
        return lb.model(input_ids=IDS).logits, report


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_vlm_adapter_on_its_vlm(vlm_models, kind):
    vlm, _ = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=LANGUAGE_ONLY)
    got, report = ours(vlm, adapter)
    assert report.key_mapping is None
    assert max_abs_diff(got, peft_logits(vlm, adapter, IDS)) <= 1e-5
    with torch.no_grad():
        base = load_base(vlm, Placement(dtype="float32"), tokenizer=False).model(input_ids=IDS).logits
    assert max_abs_diff(got, base) > 1e-3  # the adapter does change the output


@pytest.mark.parametrize("kind", KINDS)
def test_vlm_adapter_on_the_text_extraction(vlm_models, kind, tmp_path):
    _, text = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=LANGUAGE_ONLY)
    got, report = ours(text, adapter)
    assert report.key_mapping["from"] == "vlm" and report.key_mapping["to"] == "text"
    assert report.key_mapping["rules"][0] == "model.language_model.* -> model.*"
    assert sum(report.modules.values()) == 8  # 4 modules x 2 layers, all landed
    oracle = rename_adapter(adapter, tmp_path / "renamed", *VLM_TO_TEXT, TEXT_TARGETS)
    assert max_abs_diff(got, peft_logits(text, oracle, IDS)) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_text_adapter_on_the_vlm(vlm_models, kind, tmp_path):
    vlm, _ = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, on="text", target_modules=TEXT_TARGETS)
    got, report = ours(vlm, adapter)
    assert report.key_mapping["from"] == "text" and report.key_mapping["to"] == "vlm"
    oracle = rename_adapter(adapter, tmp_path / "renamed", *TEXT_TO_VLM, LANGUAGE_ONLY)
    assert max_abs_diff(got, peft_logits(vlm, oracle, IDS)) <= 1e-5


def test_legacy_keys_on_the_current_vlm(vlm_models, tmp_path):
    """An adapter saved before transformers 4.52 (language_model.model.layers...)."""
    vlm, _ = vlm_models.pair("llava")
    adapter = vlm_models.adapter("llava", target_modules=LANGUAGE_ONLY)
    legacy = rename_adapter(adapter, tmp_path / "legacy", "model.language_model.",
                            "language_model.model.", LANGUAGE_ONLY)
    got, report = ours(vlm, legacy)
    assert report.key_mapping["from"] == "vlm-legacy"
    assert max_abs_diff(got, peft_logits(vlm, adapter, IDS)) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_vision_modules_refused_on_the_text_extraction(vlm_models, kind):
    _, text = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=["q_proj", "v_proj", "qkv"])
    lb = load_base(text, Placement(dtype="float32"), tokenizer=False)
    with pytest.raises(IncompatibleBaseError, match="on the vision side .*model.vis") as err:
        attach_adapter(lb.model, str(adapter), "a")
    assert err.value.exit_code == 6 and "text-only model" in str(err.value)
    assert not any("lora" in n for n, _ in lb.model.named_modules())  # nothing changed


def peft_greedy(base, adapter, ids):
    from peft import PeftModel

    from tests.vlm_fixtures import load_any

    pm = PeftModel.from_pretrained(load_any(base), str(adapter)).eval()
    with torch.no_grad():
        return pm.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_on_the_vlm_and_the_text_extraction_matches_peft(vlm_models, kind, tmp_path):
    """generate's KV-cached loop on a VLM (Qwen2.5-VL's M-RoPE positions too), folded and not,
    gives PEFT's greedy tokens; on the text extraction too, with the mapping named in --json."""
    from transformers import AutoTokenizer

    from tests.helpers import invoke

    vlm, text = vlm_models.pair(kind)
    adapter = vlm_models.adapter(kind, target_modules=LANGUAGE_ONLY)
    ids = AutoTokenizer.from_pretrained(str(vlm))("the quick brown", return_tensors="pt").input_ids
    on_vlm = peft_greedy(vlm, adapter, ids).tolist()
    renamed = rename_adapter(adapter, tmp_path / "renamed", *VLM_TO_TEXT, TEXT_TARGETS)
    on_text = peft_greedy(text, renamed, ids).tolist()
    for base, fold, want, mapping in ((vlm, [], on_vlm, None), (vlm, ["--no-fold"], on_vlm, None),
                                      (text, [], on_text, "text")):
        res = invoke("--json", "generate", base, "-a", adapter, "--prompt", "the quick brown",
                     "--max-new-tokens", "6", *fold)
        assert res.code == 0, res.stderr
        assert res.json["completions"][0]["completion_token_ids"] == want, (base, fold)
        assert (res.json["adapters"][0]["key_mapping"] or {}).get("to") == mapping


def test_cli_attach_refuses_vision_modules_before_loading_the_base(vlm_models):
    from tests.helpers import invoke

    _, text = vlm_models.pair("gemma3")
    adapter = vlm_models.adapter("gemma3", target_modules=["q_proj", "v_proj", "qkv"])
    res = invoke("--json", "attach", text, adapter)
    assert res.code == 6 and "loading base" not in res.stderr
    assert "on the vision side (model.vision_tower." in res.json["error"]["message"]


def test_an_explicit_device_map_names_the_vlms_own_modules(vlm_models):
    from adapterctl.errors import UsageError

    vlm, _ = vlm_models.pair("llava")
    lb = load_base(vlm, Placement(dtype="float32", device_map={"model.vision_tower": "cpu", "": "cpu"}), tokenizer=False)
    assert type(lb.model).__name__ == "LlavaForConditionalGeneration"
    with pytest.raises(UsageError, match="places no device for .* model.vision_tower"):
        load_base(vlm, Placement(dtype="float32", device_map={"model.language_model": "cpu"}), tokenizer=False)
