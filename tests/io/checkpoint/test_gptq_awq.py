"""GPTQ and AWQ checkpoints read as floats: every packing variant (2/4/8 bits, symmetric or not,
act-order g_idx, v1 zeros stored minus one, v2; AWQ's GEMM interleave) dequantizes to exactly the
floats of the formats' own rules (tests/quant_fixtures.py: gptqmodel's dequantize_weight, AutoAWQ's
dequantize_gemm): in float32, and once rounded to their float16, bit for bit. The merge and attach
tests (tests/core/merge/test_merge_quantized.py, tests/core/runtime/test_dequantized.py) run on
the same bases through BASES."""

from __future__ import annotations

import json

import pytest
import torch

from tests.quant_fixtures import awq_pack, awq_reference_dequant, gptq_pack, gptq_reference_dequant


def _checkpoint(tmp_path, tensors: dict, qconf: dict):
    from safetensors.torch import save_file

    from adapterctl.io.folders.model_dir import locate_model_files

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float32",
                                                      "quantization_config": qconf}))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return locate_model_files(tmp_path)


def _read(files, key):
    from adapterctl.io.checkpoint.reader import CheckpointReader

    with CheckpointReader(files) as reader:
        assert reader.shape(key) == (96, 128)
        return reader.load(key)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("sym,desc_act,v1", [(False, True, False), (True, False, False),
                                            (True, True, True), (False, False, True)])
def test_gptq_dequantizes_to_gptqmodels_floats(tmp_path, bits, sym, desc_act, v1):
    torch.manual_seed(bits)
    W = torch.randn(96, 128) * 0.05
    qweight, qzeros, scales, g_idx = gptq_pack(W, bits, 32, sym, desc_act, v1, seed=bits)
    files = _checkpoint(tmp_path, {"m.qweight": qweight, "m.qzeros": qzeros, "m.scales": scales,
                                   "m.g_idx": g_idx},
                        {"quant_method": "gptq", "bits": bits, "group_size": 32, "sym": sym,
                         "desc_act": desc_act, "checkpoint_format": "gptq" if v1 else "gptq_v2"})
    ours = _read(files, "m.weight")
    half, full = gptq_reference_dequant(qweight, qzeros, scales, g_idx, bits, v1)
    assert ours.dtype == torch.float32 and torch.equal(ours, full)
    assert torch.equal(ours.half(), half)
    assert (ours - W).abs().max() < (scales.float().max() * (1 if bits > 2 else 2))  # it is W, quantized


def test_gptq_without_g_idx_uses_consecutive_groups(tmp_path):
    W = torch.randn(96, 128) * 0.05
    qweight, qzeros, scales, g_idx = gptq_pack(W, 4, 32, False, False, False)
    files = _checkpoint(tmp_path, {"m.qweight": qweight, "m.qzeros": qzeros, "m.scales": scales},
                        {"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "gptq_v2"})
    assert torch.equal(_read(files, "m.weight"), gptq_reference_dequant(qweight, qzeros, scales, g_idx, 4, False)[1])


def test_awq_gemm_dequantizes_to_autoawqs_floats(tmp_path):
    torch.manual_seed(0)
    W = torch.randn(96, 128) * 0.05
    qweight, qzeros, scales = awq_pack(W, 32)
    files = _checkpoint(tmp_path, {"m.qweight": qweight, "m.qzeros": qzeros, "m.scales": scales},
                        {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                         "version": "gemm"})
    ours = _read(files, "m.weight")
    half, full = awq_reference_dequant(qweight, qzeros, scales, 32)
    assert torch.equal(ours, full) and torch.equal(ours.half(), half)
    assert (ours - W).abs().max() < scales.float().max()
