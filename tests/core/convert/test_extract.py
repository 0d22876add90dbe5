"""Extraction of a LoRA adapter from a full fine-tune: PEFT loads it on the base and reproduces
the fine-tuned model's logits when the change has low rank."""

from __future__ import annotations

import json

import pytest
import torch

from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.errors import UsageError
from tests.convert_fixtures import load_tensors, make_finetune, model_logits, peft_logits


@pytest.mark.parametrize("model,changes,targets,mts", [
    ("llama", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
               "model.layers.1.self_attn.q_proj.weight", "model.layers.1.input_layernorm.weight"],
     ["embed_tokens", "q_proj"], ["model.layers.1.input_layernorm"]),
    ("qwen2", ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
               "model.layers.1.mlp.down_proj.weight", "model.norm.weight"],
     ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"], ["model.norm"]),
    ("gpt2", ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight",
              "transformer.h.1.mlp.c_fc.weight"],
     ["c_attn", "transformer.h.1.mlp.c_fc"], None),
])
def test_extract_reproduces_finetune(model, changes, targets, mts, tiny_models, tmp_path):
    base, ft = tiny_models[model], tmp_path / "ft"
    make_finetune(base, ft, changes)
    res = run_convert(ConvertRequest(str(ft), str(tmp_path / "o"), extract_base=str(base), rank=4))
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(targets)
    assert cfg["modules_to_save"] == mts and cfg["r"] == 4 and cfg["lora_alpha"] == 4
    assert inspect_adapter(tmp_path / "o").usable
    assert all(m.energy == pytest.approx(1.0, abs=1e-6) and m.r_after == 4 for m in res.modules)
    torch.testing.assert_close(peft_logits(base, tmp_path / "o"), model_logits(ft),
                               atol=2e-5, rtol=1e-5)


def test_extract_energy_and_skip_unfactorable(tiny_models, tmp_path):
    base, ft = tiny_models["qwen2"], tmp_path / "ft"
    make_finetune(base, ft, ["model.layers.0.self_attn.k_proj.weight", "model.norm.weight"],
                  max_shard_size="100KB")
    assert (ft / "model.safetensors.index.json").exists()  # streamed shard by shard
    res = run_convert(ConvertRequest(str(ft), str(tmp_path / "o"), extract_base=str(base), rank=8,
                                     energy=0.5, skip_unfactorable=True))
    assert [m.r_after for m in res.modules] == [1] and res.modules[0].energy >= 0.5
    assert any("model.norm.weight" in n and "skipped" in n for n in res.notes)
    keys = load_tensors(tmp_path / "o")
    assert all("lora_" in k for k in keys)
    peft_logits(base, tmp_path / "o")  # loads


def test_extract_same_model_is_refused(tiny_models, tmp_path):
    with pytest.raises(UsageError, match="no changed weight matrix"):
        run_convert(ConvertRequest(str(tiny_models["llama"]), str(tmp_path / "o"),
                                   extract_base=str(tiny_models["llama"]), rank=4))
    assert not (tmp_path / "o").exists()


def test_extract_reads_legacy_bin_checkpoints(tiny_models, tmp_path):
    from tests.io.checkpoint.test_reader import save_as_bin

    base, ft = tiny_models["llama"], tmp_path / "ft"
    make_finetune(base, ft, ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"])
    run_convert(ConvertRequest(str(ft), str(tmp_path / "st"), extract_base=str(base), rank=4))
    ft_bin, base_bin = save_as_bin(ft, tmp_path / "ft-bin"), save_as_bin(base, tmp_path / "base-bin")
    run_convert(ConvertRequest(str(ft_bin), str(tmp_path / "bin"), extract_base=str(base_bin), rank=4))
    ours, want = load_tensors(tmp_path / "bin"), load_tensors(tmp_path / "st")
    assert sorted(ours) == sorted(want) and all(torch.equal(ours[k], want[k]) for k in ours)
