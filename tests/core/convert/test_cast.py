"""--to-safetensors (legacy .bin, safe loading only), --dtype, --for-serving, and the writer."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.errors import InvalidAdapterError
from adapterctl.io.folders.model_card import split_card
from adapterctl.io.safetensors.header import read_safetensors_header
from tests.convert_fixtures import load_tensors, peft_logits


def _to_bin(src, dst, state=None):
    dst.mkdir()
    shutil.copy(src / "adapter_config.json", dst / "adapter_config.json")
    torch.save(state if state is not None else load_tensors(src), dst / "adapter_model.bin")
    return dst


def test_bin_to_safetensors_round_trip(peft_adapter, tiny_models, tmp_path):
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    legacy = _to_bin(src, tmp_path / "legacy")
    res = run_convert(ConvertRequest(str(legacy), str(tmp_path / "o"), to_safetensors=True))
    assert res.steps == ["to-safetensors"]
    ours, orig = load_tensors(tmp_path / "o"), load_tensors(src)
    assert sorted(ours) == sorted(orig) and all(torch.equal(ours[k], orig[k]) for k in ours)
    torch.testing.assert_close(peft_logits(tiny_models["llama"], tmp_path / "o"),
                               peft_logits(tiny_models["llama"], src))
    header = read_safetensors_header(tmp_path / "o" / "adapter_model.safetensors")
    assert header.metadata == {"format": "pt"}
    cfg_text = (tmp_path / "o" / "adapter_config.json").read_text()
    assert cfg_text == json.dumps(json.loads(cfg_text), indent=2, sort_keys=True) + "\n"
    meta = split_card((tmp_path / "o" / "README.md").read_text())[0]  # the one card writer
    assert meta == {"library_name": "peft", "tags": ["lora"], "pipeline_tag": "text-generation"}
    assert any("is a local path, not a Hub id" in n for n in res.notes)  # said, not written
    assert inspect_adapter(tmp_path / "o").usable


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.mark.parametrize("state", [{"x": _Evil()}, {"base_model.model.q.lora_A.weight": 3}],
                         ids=["code-execution", "not-a-tensor"])
def test_unsafe_pickle_is_refused(state, peft_adapter, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = peft_adapter("llama", r=4, target_modules=["q_proj"])
    legacy = _to_bin(src, tmp_path / "legacy", state)
    with pytest.raises(InvalidAdapterError, match="adapter_model.bin"):
        run_convert(ConvertRequest(str(legacy), str(tmp_path / "o"), to_safetensors=True))
    assert not (tmp_path / "pwned-by-pickle").exists() and not (tmp_path / "o").exists()


def test_dtype_casts_everything_once(peft_adapter, tiny_models, tmp_path):
    src = peft_adapter("gpt2", r=4, target_modules=["c_attn"])
    res = run_convert(ConvertRequest(str(src), str(tmp_path / "o"), dtype="bfloat16"))
    assert res.dtypes == ["bfloat16"]
    ours, orig = load_tensors(tmp_path / "o"), load_tensors(src)
    assert all(torch.equal(ours[k], orig[k].to(torch.bfloat16)) for k in ours)
    peft_logits(tiny_models["gpt2"], tmp_path / "o")  # loads


def test_for_serving_strips_full_weight_extras(peft_adapter, tiny_models, tmp_path):
    src = peft_adapter("qwen2", r=4, target_modules=["q_proj", "v_proj"], bias="lora_only",
                       modules_to_save=["lm_head"])
    res = run_convert(ConvertRequest(str(src), str(tmp_path / "o"), for_serving=True,
                                     dtype="float16"))
    removed = "\n".join(res.removed)
    assert "lm_head.weight" in removed and "q_proj.bias" in removed
    assert "modules_to_save" in removed and "bias='lora_only'" in removed
    keys = load_tensors(tmp_path / "o")
    assert keys and all(".lora_" in k for k in keys)
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and cfg["bias"] == "none"
    peft_logits(tiny_models["qwen2"], tmp_path / "o")  # loads without the extras
    assert inspect_adapter(tmp_path / "o").usable
