"""merge into FP8, MXFP4, compressed-tensors, GPTQ and AWQ bases (issues 17, 28): the base is dequantized tensor by
tensor, and the merged model equals PEFT's merge_and_unload on the same model dequantized by the
format's own reference code (tests/quant_fixtures.py). Tolerance: float32 output max abs diff
<= 1e-5 (the deltas' float32 order of operations); bfloat16 output: equal (one rounding each)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.core.merge.test_merge import load_out, max_diff, ours, peft_merged
from tests.quant_fixtures import BASES, build_fp8


@pytest.mark.parametrize("name", list(BASES))
def test_merge_equals_peft_on_the_dequantized_base(name, quant_base, peft_adapter, tmp_path):
    qdir, dense = quant_base(name)
    adapter = peft_adapter("llama", r=4, target_modules="all-linear")
    job, result = ours(qdir, [adapter], tmp_path / "out", dtype="float32")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert result.tensors_merged == 14  # 7 Linear layers x 2 decoder layers
    assert max_diff(load_out(tmp_path / "out"), peft_merged(dense, [adapter])) <= 1e-5


def test_bfloat16_output_rounds_once(quant_base, peft_adapter, tmp_path):
    qdir, dense = quant_base("ct_int4_group_asym")
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "down_proj"])
    ours(qdir, [adapter], tmp_path / "out", dtype="bfloat16")
    got = load_out(tmp_path / "out", dtype=torch.bfloat16)
    want = peft_merged(dense, [adapter]).to(torch.bfloat16)
    assert max_diff(got, want) == 0.0


def test_mxfp4_experts_dequantize_to_the_fused_dense_tensors(gpt_oss):
    from safetensors.torch import load_file

    from adapterctl.io.checkpoint.reader import CheckpointReader
    from adapterctl.io.folders.model_dir import locate_model_files

    qdir, dense = gpt_oss
    want = load_file(str(dense / "model.safetensors"))
    with CheckpointReader(locate_model_files(qdir)) as reader:
        assert set(reader.names) == set(want)  # _blocks/_scales read back under the model's names
        assert reader.shape("model.layers.0.mlp.experts.gate_up_proj") == (4, 64, 128)
        assert reader.shape("model.layers.1.mlp.experts.down_proj") == (4, 64, 64)
        for key in want:
            assert torch.equal(reader.load(key).float(), want[key].float()), key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_lora_into_an_mxfp4_gpt_oss(dtype, gpt_oss, tmp_path):
    from tests.conftest import make_peft_adapter

    qdir, dense = gpt_oss
    adapter = make_peft_adapter(dense, tmp_path / "a", r=4, target_modules=["q_proj", "v_proj", "o_proj"])
    _, result = ours(qdir, [adapter], tmp_path / "out", dtype=dtype)
    assert result.tensors_merged == 6
    tdtype = getattr(torch, dtype)
    want = peft_merged(dense, [adapter]).to(tdtype)
    assert max_diff(load_out(tmp_path / "out", dtype=tdtype), want) <= (1e-5 if dtype == "float32" else 0.0)


def test_a_bf16_fp8_checkpoint_merges_into_float32_without_a_bf16_step(tmp_path):
    """Real FP8 checkpoints keep their other tensors in bfloat16: --dtype float32 gets the exact
    dequantized weights (not rounded to bfloat16 first), and the default output is bfloat16
    (the checkpoint's float dtype), each rounded once."""
    from tests.conftest import _llama_config, build_model, make_peft_adapter

    src = build_model(_llama_config(tie_word_embeddings=False), tmp_path / "bf16", dtype=torch.bfloat16)
    qdir, dense = build_fp8(src, tmp_path, (32, 32))
    adapter = make_peft_adapter(src, tmp_path / "a", r=4, target_modules=["q_proj", "up_proj"])
    want = peft_merged(dense, [adapter])  # float32 dequantized base, float32 maths
    _, result = ours(qdir, [adapter], tmp_path / "f32", dtype="float32")
    assert max_diff(load_out(tmp_path / "f32"), want) <= 1e-5
    _, result = ours(qdir, [adapter], tmp_path / "auto")
    assert result.dtype == "bfloat16"
    assert max_diff(load_out(tmp_path / "auto", dtype=torch.bfloat16), want.to(torch.bfloat16)) == 0.0
