"""``adapterctl attach``: summary, --json shape, completions equal to PEFT's, and every refusal
with its exit code and a message naming what is wrong (no traceback)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from tests.helpers import invoke, run_cli, write_adapter


@pytest.fixture(scope="module")
def llama_lora(peft_adapter):
    return peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "o_proj"])


def _peft_completion(base, adapter, prompt, n):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=n, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_json_document_and_tokens_match_peft(tiny_models, llama_lora):
    res = invoke("--json", "attach", tiny_models["llama"], llama_lora, "--prompt", "the quick brown",
                 "--prompt", "merge the", "--max-new-tokens", "6", "--dtype", "float32")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["ok"] and doc["base"]["dtype"] == "float32" and doc["base"]["devices"]["cpu"] > 0
    (a,) = doc["adapters"]  # named after its folder, as generate names it (one naming rule)
    assert a["name"] == llama_lora.name and a["modules"] == {"Linear": 6} and a["parameters"] > 0
    assert doc["active"] == {llama_lora.name: 1.0}
    assert [c["prompt"] for c in doc["completions"]] == ["the quick brown", "merge the"]
    for c in doc["completions"]:
        assert c["completion_token_ids"] == _peft_completion(tiny_models["llama"], llama_lora,
                                                             c["prompt"], 6)
        assert isinstance(c["completion"], str)


def test_human_output_and_base_from_adapter_config(tiny_models, llama_lora, tmp_path):
    adapter = tmp_path / "lora"
    shutil.copytree(llama_lora, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_models["llama"])
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    res = invoke("attach", adapter)
    assert res.code == 0, res.stderr
    assert "Linear x6" in res.stdout and "lora" in res.stdout
    assert f"loading base {tiny_models['llama']}" in res.stderr and "as 'lora'" in res.stderr


def test_several_adapters_with_names_and_weights(tiny_models, llama_lora, peft_adapter):
    other = peft_adapter("llama", seed=3, r=2, target_modules=["embed_tokens", "down_proj"])
    res = invoke("--json", "attach", tiny_models["llama"], llama_lora, other, "--name", "x",
                 "--name", "y", "--weight", "1", "--weight", "0.5")
    assert res.code == 0, res.stderr
    assert res.json["active"] == {"x": 1.0, "y": 0.5}
    assert [a["modules"] for a in res.json["adapters"]] == [{"Linear": 6},
                                                           {"Embedding": 1, "Linear": 2}]


def test_weights_as_adapter_equals_weight(tiny_models, llama_lora, peft_adapter):
    """ADAPTER=WEIGHT, and the deprecated --weight (still working, with a warning) agree; a
    weighted first argument is an adapter, not the base."""
    other = peft_adapter("llama", seed=3, r=2, target_modules=["down_proj"])
    new = invoke("--json", "attach", tiny_models["llama"], llama_lora, f"{other}=0.5")
    assert new.code == 0, new.stderr
    assert new.json["active"] == {llama_lora.name: 1.0, other.name: 0.5}
    assert "deprecated" not in new.stderr
    old = invoke("--json", "attach", tiny_models["llama"], llama_lora, other, "--weight", "1",
                 "--weight", "0.5")
    assert old.code == 0 and old.json["active"] == new.json["active"]
    assert "--weight is deprecated and will be removed in 0.4: write ADAPTER=WEIGHT" in old.stderr
    first = invoke("--json", "attach", f"{llama_lora}=0.25", "--base", tiny_models["llama"])
    assert first.code == 0 and first.json["active"] == {llama_lora.name: 0.25}


@pytest.mark.parametrize("args, message", [
    (["A=0.5", "--weight", "1"], "weights given twice"),
    (["A", "B", "--weight", "1"], "--weight has 1 values for 2 adapters"),
    (["A=nan"], "is not a finite number"),
    (["A", "B", "--name", "x"], "1 --name value(s) for 2 adapter(s)"),
])
def test_weight_and_name_refusals(tiny_models, args, message):
    res = invoke("--json", "attach", "--base", tiny_models["llama"], *args)
    assert res.code == 2 and message in res.json["error"]["message"], res.stdout


def test_lora_on_a_tied_head_only(tiny_models, peft_adapter):
    """The tied lm_head has no weight in the checkpoint: the early check must not refuse it."""
    adapter = peft_adapter("llama_tied", r=4, target_modules=["lm_head"])
    res = invoke("--json", "attach", tiny_models["llama_tied"], adapter)
    assert res.code == 0, res.stderr
    assert res.json["adapters"][0]["modules"] == {"Linear": 1}


def test_base_name_mismatch_warns(tiny_models, llama_lora, tmp_path):
    adapter = tmp_path / "lora"
    shutil.copytree(llama_lora, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/other-model"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    res = invoke("attach", tiny_models["llama"], adapter)
    assert res.code == 0
    assert "warning:" in res.stderr and "someone/other-model" in res.stderr


# ----- refusals ------------------------------------------------------------------------------

def _bad_adapter(tmp_path, config=None, tensors=None):
    A, B = torch.randn(4, 64), torch.randn(64, 4)
    p = "base_model.model.model.layers.0.self_attn.q_proj"
    return write_adapter(tmp_path / "bad", {"r": 4, "target_modules": ["q_proj"], **(config or {})},
                         tensors if tensors is not None else {f"{p}.lora_A.weight": A,
                                                              f"{p}.lora_B.weight": B})


def test_wrong_base_names_modules_and_shapes(tiny_models, llama_lora):
    """Refused from the base's headers, before its weights load (the one loader's precheck)."""
    res = invoke("attach", tiny_models["gpt2"], llama_lora)  # refused before the weights load
    assert res.code == 6 and "none of its 6 LoRA modules" in res.stderr and "gpt2" in res.stderr
    assert "model.layers.0.self_attn.q_proj" in res.stderr and "Traceback" not in res.stderr
    assert "loading base" not in res.stderr


def test_unexpected_keys_are_named(tiny_models, tmp_path):
    p = "base_model.model.model.layers.0.self_attn.qq_proj"
    adapter = _bad_adapter(tmp_path, tensors={f"{p}.lora_A.weight": torch.randn(4, 64),
                                              f"{p}.lora_B.weight": torch.randn(64, 4)})
    res = invoke("--json", "attach", tiny_models["llama"], adapter)
    assert res.code == 6 and "model.layers.0.self_attn.qq_proj" in res.json["error"]["message"]


def test_missing_lora_b_key(tiny_models, tmp_path):
    p = "base_model.model.model.layers.0.self_attn.q_proj"
    adapter = _bad_adapter(tmp_path, tensors={f"{p}.lora_A.weight": torch.randn(4, 64)})
    res = invoke("attach", tiny_models["llama"], adapter)
    assert res.code == 4 and "lora_B" in res.stderr and "q_proj" in res.stderr


def test_shape_mismatch(tiny_models, tmp_path):
    p = "base_model.model.model.layers.0.self_attn.v_proj"  # v_proj is 64 -> 32 (GQA)
    adapter = _bad_adapter(tmp_path, tensors={f"{p}.lora_A.weight": torch.randn(4, 64),
                                              f"{p}.lora_B.weight": torch.randn(64, 4)})
    res = invoke("attach", tiny_models["llama"], adapter)
    assert res.code == 6 and "v_proj" in res.stderr and "out 32" in res.stderr


@pytest.mark.parametrize("key,value,label", [
    ("use_qalora", True, "QALoRA"), ("alora_invocation_tokens", [1, 2], "aLoRA"),
    ("arrow_config", {"top_k": 2}, "Arrow"), ("monteclora_config", {"x": 1}, "MonteCLoRA"),
])
def test_unsupported_variants_are_refused_by_name(tiny_models, tmp_path, key, value, label):
    res = invoke("--json", "attach", tiny_models["llama"], _bad_adapter(tmp_path, {key: value}))
    assert res.code == 5
    assert key in res.json["error"]["message"] and label in res.json["error"]["message"]


def test_kasa_without_its_diagonal_is_invalid(tiny_models, tmp_path):
    """KaSA is supported (tests/core/lora/test_variants.py); a file without lora_diag is broken."""
    res = invoke("--json", "attach", tiny_models["llama"], _bad_adapter(tmp_path, {"kasa_config": {}}))
    assert res.code == 4 and "lora_diag" in res.json["error"]["message"]


@pytest.mark.parametrize("init", ["corda", "loftq", "lora_ga"])
def test_unrecomputable_inits_are_refused_with_a_hint(tiny_models, tmp_path, init):
    res = invoke("--json", "attach", tiny_models["llama"],
                 _bad_adapter(tmp_path, {"init_lora_weights": init}))
    assert res.code == 5 and init in res.json["error"]["message"]
    assert "convert" in res.json["error"]["hint"].lower()


def test_not_lora(tiny_models, tmp_path):
    res = invoke("attach", tiny_models["llama"], _bad_adapter(tmp_path, {"peft_type": "IA3"}))
    assert res.code == 5 and "IA3" in res.stderr


def test_quantize_without_bitsandbytes(tiny_models, llama_lora, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    res = invoke("attach", tiny_models["llama"], llama_lora, "--quantize", "nf4")
    assert res.code == 7 and "bitsandbytes" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("dmap,code,text", [
    ('{"model.embed_tokens": "cpu"}', 2, "places no device"),
    ('{"model.nope": "cpu", "": "cpu"}', 2, "model.nope"),
    ('{"": "cuda:3"}', 7, "cuda:3"),
    ("nonsense", 2, "neither"),
])
def test_device_maps_that_do_not_fit(tiny_models, llama_lora, dmap, code, text):
    res = invoke("attach", tiny_models["llama"], llama_lora, "--device-map", dmap)
    assert res.code == code and text in res.stderr


def test_bad_dtype(tiny_models, llama_lora):
    res = invoke("attach", tiny_models["llama"], llama_lora, "--dtype", "int4")
    assert res.code == 2 and "int4" in res.stderr


def test_no_base_anywhere(peft_adapter, tmp_path, llama_lora):
    adapter = tmp_path / "lora"
    shutil.copytree(llama_lora, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    res = invoke("attach", adapter)
    assert res.code == 3 and "base_model_name_or_path" in res.stderr


def test_subprocess_error_has_no_traceback(tiny_models, tmp_path):
    res = run_cli("attach", tiny_models["gpt2"], _bad_adapter(tmp_path))
    assert res.code == 6 and "Traceback" not in res.stderr and "error:" in res.stderr
