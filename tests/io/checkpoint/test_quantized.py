"""The dequantizing reader against each format's reference dequantization, tensor by tensor, on
schemes the merge tests do not cover: ragged FP8 blocks in compressed-tensors, int4 channel and
asymmetric int8 packs, activation-ordered groups (weight_g_idx), config groups chosen by regex
targets, and a sharded checkpoint whose scales sit in another shard than their weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterctl.io.checkpoint.reader import CheckpointReader
from adapterctl.io.folders.model_dir import locate_model_files
from tests.quant_fixtures import build_compressed, build_fp8

SCHEMES = {
    "float_block_ragged": ("float-quantized", dict(num_bits=8, type="float", symmetric=True,
                                                   strategy="block", block_structure=[48, 40])),
    "int4_channel": ("pack-quantized", dict(num_bits=4, type="int", symmetric=True, strategy="channel")),
    "int8_channel_asym": ("pack-quantized", dict(num_bits=8, type="int", symmetric=False,
                                                 strategy="channel")),
    "int8_naive_group": ("naive-quantized", dict(num_bits=8, type="int", symmetric=True,
                                                 strategy="group", group_size=16)),
}


def _read_all(folder) -> dict[str, torch.Tensor]:
    with CheckpointReader(locate_model_files(folder)) as reader:
        return {k: reader.load(k) for k in reader.names}


def _assert_equal(folder, dense):
    want = load_file(str(dense / "model.safetensors"))
    got = _read_all(folder)
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key].float(), want[key].float()), key


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_compressed_schemes_equal_the_compressor(scheme, tiny_models, tmp_path):
    fmt, weights = SCHEMES[scheme]
    _assert_equal(*build_compressed(tiny_models["llama"], tmp_path, fmt, weights))


def test_activation_ordered_groups(tiny_models, tmp_path):
    """``weight_g_idx`` gives each column its group (GPTQ act-order exports): W[:, j] uses the
    scale and zero point of group g_idx[j]."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    qdir, _ = build_compressed(tiny_models["llama"], tmp_path, "pack-quantized",
                               dict(num_bits=4, type="int", symmetric=True, strategy="group",
                                    group_size=32))
    state = load_file(str(qdir / "model.safetensors"))
    key = "model.layers.0.mlp.down_proj"  # 64 x 96: 3 groups
    g_idx = torch.randperm(96, generator=torch.Generator().manual_seed(0)) % 3
    state[f"{key}.weight_g_idx"] = g_idx.to(torch.int32)
    save_file(state, str(qdir / "model.safetensors"), metadata={"format": "pt"})
    q = unpack_from_int32(state[f"{key}.weight_packed"], 4, torch.Size([64, 96])).float()
    want = q * state[f"{key}.weight_scale"].float()[:, g_idx]
    assert torch.equal(_read_all(qdir)[f"{key}.weight"], want)


def test_config_groups_chosen_by_regex_targets(tiny_models, tmp_path):
    """Attention int8 per channel, MLP int4 per group: each module dequantized with its group's
    scheme (a regex target wins over a class-name one, as in compressed-tensors)."""
    src = tiny_models["llama"]
    attn, attn_dense = build_compressed(src, tmp_path / "a", "pack-quantized",
                                        dict(num_bits=8, type="int", symmetric=True, strategy="channel"))
    mlp, mlp_dense = build_compressed(src, tmp_path / "m", "pack-quantized",
                                      dict(num_bits=4, type="int", symmetric=True, strategy="group",
                                           group_size=32))
    state, dense = load_file(str(mlp / "model.safetensors")), load_file(str(mlp_dense / "model.safetensors"))
    attn_state, attn_ref = load_file(str(attn / "model.safetensors")), load_file(str(attn_dense / "model.safetensors"))
    state = {k: v for k, v in state.items() if "self_attn" not in k}
    state.update({k: v for k, v in attn_state.items() if "self_attn" in k})
    dense.update({k: v for k, v in attn_ref.items() if "self_attn" in k})
    save_file(state, str(mlp / "model.safetensors"), metadata={"format": "pt"})
    save_file(dense, str(mlp_dense / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((mlp / "config.json").read_text())
    groups = config["quantization_config"]["config_groups"]
    groups["group_1"] = dict(json.loads((attn / "config.json").read_text())
                             ["quantization_config"]["config_groups"]["group_0"],
                             targets=["re:.*self_attn\\..*"])
    (mlp / "config.json").write_text(json.dumps(config))
    _assert_equal(mlp, mlp_dense)


def test_scales_in_another_shard(tiny_models, tmp_path):
    qdir, dense = build_fp8(tiny_models["llama"], tmp_path, (32, 32))
    state = load_file(str(qdir / "model.safetensors"))
    (qdir / "model.safetensors").unlink()
    scales = {k: v for k, v in state.items() if k.endswith("_scale_inv")}
    rest = {k: v for k, v in state.items() if k not in scales}
    save_file(rest, str(qdir / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(scales, str(qdir / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    index = {k: "model-00001-of-00002.safetensors" for k in rest}
    index.update({k: "model-00002-of-00002.safetensors" for k in scales})
    (qdir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    _assert_equal(qdir, dense)


def test_fp8_per_tensor_scales_and_static_activation_scales(tiny_models, tmp_path):
    """``weight_block_size: null``: one scale per tensor; a static scheme's ``activation_scale``
    only serves the FP8 matmul and is not a parameter of the dequantized model."""
    qdir, dense = build_fp8(tiny_models["llama"], tmp_path, None)
    state = load_file(str(qdir / "model.safetensors"))
    state["model.layers.0.self_attn.q_proj.activation_scale"] = torch.tensor(0.5)
    save_file(state, str(qdir / "model.safetensors"), metadata={"format": "pt"})
    _assert_equal(qdir, dense)


def test_compressed_kv_cache_and_input_scales_are_dropped(tiny_models, tmp_path):
    qdir, dense = build_compressed(tiny_models["llama"], tmp_path, "float-quantized",
                                   dict(num_bits=8, type="float", symmetric=True, strategy="tensor"))
    state = load_file(str(qdir / "model.safetensors"))
    for layer in (0, 1):
        state[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(1.0)
        state[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(1.0)
        state[f"model.layers.{layer}.mlp.up_proj.input_scale"] = torch.tensor([0.1])
    save_file(state, str(qdir / "model.safetensors"), metadata={"format": "pt"})
    _assert_equal(qdir, dense)
