"""Broken FP8 / MXFP4 / compressed-tensors / GPTQ / AWQ checkpoints and quantization methods adapterctl does not
read: each is refused before anything is written, naming the file and key, with a hint and its
exit code (4: broken checkpoint, 5: unsupported method or format, 2: --quantize on such a base)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers import invoke


def _variant(src, dst, edit_state=None, edit_qconf=None):
    """A copy of checkpoint ``src`` with its tensors and/or quantization_config edited."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if edit_state:
        state = load_file(str(dst / "model.safetensors"))
        edit_state(state)
        save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if edit_qconf:
        config = json.loads((dst / "config.json").read_text())
        edit_qconf(config["quantization_config"])
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _merge(base, adapter, tmp_path):
    res = invoke("merge", base, adapter, "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return res


Q = "model.layers.0.self_attn.q_proj"


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _drop(key):
    return lambda state: state.pop(key)


def _put(field, value):
    return lambda qconf: qconf.__setitem__(field, value)


def _group(field, value):
    return lambda qconf: qconf["config_groups"]["group_0"]["weights"].__setitem__(field, value)


CASES = {
    "fp8_missing_scale": ("fp8_ragged_blocks", _drop(f"{Q}.weight_scale_inv"), None, 4,
                          [f"{Q}.weight is float8 but has no {Q}.weight_scale_inv", "model.safetensors"]),
    "fp8_scale_shape": ("fp8_ragged_blocks", _set(f"{Q}.weight_scale_inv", torch.ones(1, 1)), None, 4,
                        [f"{Q}.weight_scale_inv has shape [1, 1], expected [2, 2]", "weight_block_size"]),
    "fp8_orphan_scale": ("fp8_ragged_blocks", _drop(f"{Q}.weight"), None, 4,
                         [f"{Q}.weight_scale_inv scales {Q}.weight, which is missing"]),
    "fp8_block_size": ("fp8_ragged_blocks", None, _put("weight_block_size", [128]), 4,
                       ["config.json: quantization_config.weight_block_size is [128]"]),
    "unknown_method": ("fp8_ragged_blocks", None, _put("quant_method", "hqq"), 5,
                       ["config.json: quantization_config.quant_method 'hqq' is not supported"]),
    "gptq_missing_qzeros": ("gptq_v2_asym_desc_act", _drop(f"{Q}.qzeros"), None, 4,
                            [f"{Q}.qweight has no {Q}.qzeros", "model.safetensors"]),
    "gptq_g_idx_shape": ("gptq_v2_asym_desc_act", _set(f"{Q}.g_idx", torch.zeros(3, dtype=torch.int32)),
                         None, 4, [f"{Q}.g_idx [3] disagree for 4-bit GPTQ"]),
    "gptq_g_idx_range": ("gptq_v2_asym_desc_act", _set(f"{Q}.g_idx", torch.full((64,), 9, dtype=torch.int32)),
                         None, 4, [f"{Q}.weight: g_idx names groups outside 0..1"]),
    "gptq_marlin": ("gptq_v1_sym", None, _put("checkpoint_format", "marlin"), 5,
                    ["GPTQ checkpoint format 'marlin' is not read"]),
    "gptq_3bit": ("gptq_v1_sym", None, _put("bits", 3), 5, ["GPTQ with bits=3 is not read"]),
    "awq_gemv": ("awq_gemm", None, _put("version", "gemv"), 5,
                 ["AWQ version='gemv', bits=4, zero_point=True is not read"]),
    "awq_scales_shape": ("awq_gemm", _set(f"{Q}.scales", torch.ones(2, 63, dtype=torch.float16)), None, 4,
                         [f"{Q}.scales [2, 63] are not AWQ GEMM's"]),
    "ct_missing_scale": ("ct_int4_group_asym", _drop(f"{Q}.weight_scale"), None, 4,
                         [f"{Q}.weight_packed has no {Q}.weight_scale", "model.safetensors"]),
    "ct_scale_shape": ("ct_int4_group_asym", _set(f"{Q}.weight_scale", torch.ones(64, 3)), None, 4,
                       [f"{Q}.weight_scale has shape [64, 3], expected [64, 2] for group scales"]),
    "ct_packed_shape": ("ct_int4_group_asym", _set(f"{Q}.weight_packed",
                                                   torch.zeros(64, 7, dtype=torch.int32)), None, 4,
                        [f"{Q}.weight_packed has shape [64, 7]", "weight_shape [64, 64]"]),
    "ct_unknown_format": ("ct_int4_group_asym", None, _put("config_groups", {"group_0": {
        "targets": ["Linear"], "format": "nvfp4-pack-quantized",
        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group"}}}), 5,
        ["config_groups.group_0: format 'nvfp4-pack-quantized' is not supported"]),
    "ct_int3": ("ct_int4_group_asym", None, _group("num_bits", 3), 5,
                ["config_groups.group_0: int 3-bit weights in pack-quantized is not supported"]),
    "ct_sparse": ("ct_int8_channel", None, _put("sparsity_config", {"format": "sparse-24-bitmask"}),
                  5, ["sparsity format 'sparse-24-bitmask' is not supported"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_or_unsupported_checkpoints(case, quant_base, peft_adapter, tmp_path):
    name, edit_state, edit_qconf, code, texts = CASES[case]
    base = _variant(quant_base(name)[0], tmp_path / "base", edit_state, edit_qconf)
    res = _merge(base, peft_adapter("llama", r=4, target_modules=["q_proj"]), tmp_path)
    assert res.code == code, res.stderr
    for text in texts:
        assert text in res.stderr
    assert "Traceback" not in res.stderr and "hint" in res.stderr.lower()


MX = "model.layers.0.mlp.experts.gate_up_proj"


@pytest.mark.parametrize("edit,text", [
    (_drop(f"{MX}_scales"), f"{MX}_blocks has no {MX}_scales"),
    (_drop(f"{MX}_blocks"), f"{MX}_scales has no {MX}_blocks"),
    (_set(f"{MX}_scales", torch.zeros(4, 128, 3, dtype=torch.uint8)),
     f"{MX}_scales has shape [4, 128, 3] and {MX}_blocks [4, 128, 2, 16]")])
def test_broken_mxfp4_checkpoints(edit, text, gpt_oss, tmp_path):
    from tests.conftest import make_peft_adapter

    base = _variant(gpt_oss[0], tmp_path / "base", edit)
    adapter = make_peft_adapter(gpt_oss[1], tmp_path / "a", r=4, target_modules=["q_proj"])
    res = _merge(base, adapter, tmp_path)
    assert res.code == 4 and text in res.stderr and "model.safetensors" in res.stderr, res.stderr


def test_attach_names_the_broken_key_too(quant_base, peft_adapter, tmp_path):
    base = _variant(quant_base("fp8_ragged_blocks")[0], tmp_path / "base",
                    _drop(f"{Q}.weight_scale_inv"))
    res = invoke("attach", base, peft_adapter("llama", r=4, target_modules=["q_proj"]))
    assert res.code == 4 and f"{Q}.weight is float8 but has no" in res.stderr, res.stderr


@pytest.mark.parametrize("name", ["fp8_ragged_blocks", "ct_int4_group_asym", "ct_int8_naive_tensor",
                                  "gpt_oss", "gptq_v2_asym_desc_act", "gptq_v1_asym_desc_act_8bit",
                                  "awq_gemm"])
def test_header_shapes_name_the_dense_weights(name, quant_base, gpt_oss):
    """The torch-free shapes (inspect/check --base, attach's early check) hold every parameter the
    dequantizing reader gives, with its shape."""
    from adapterctl.io.checkpoint.reader import CheckpointReader
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_shapes

    files = locate_model_files(gpt_oss[0] if name == "gpt_oss" else quant_base(name)[0])
    shapes = read_model_shapes(files)
    with CheckpointReader(files) as reader:
        assert {k: reader.shape(k) for k in reader.names}.items() <= shapes.items()


def test_inspect_and_check_against_a_packed_base(quant_base, peft_adapter):
    base = quant_base("ct_int4_group_asym")[0]
    adapter = peft_adapter("llama", r=4, target_modules="all-linear")
    res = invoke("--json", "inspect", adapter, "--base", base)
    assert res.code == 0 and res.json["usable"], res.stdout
    res = invoke("--json", "check", adapter, "--base", base, "--engine", "vllm")
    assert res.code == 0, res.stdout
