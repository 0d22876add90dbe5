"""Quantized checkpoints built from tiny float models with the formats' published rules, each with
its oracle: the same model dequantized by the format's own reference code (transformers'
``_dequantize_fp8_weight`` / ``convert_moe_packed_tensors``, compressed-tensors' compressors; for
GPTQ and AWQ, whose packages do not install on CPU, packers and dequantizers written line by line
from gptqmodel 7.7's ``pack_original``/``dequantize_weight`` and AutoAWQ 0.2.9's
``WQLinear_GEMM.from_linear``/``dequantize_gemm``),
saved as a plain float checkpoint for PEFT and transformers to load. Registered by
tests/conftest.py (``pytest_plugins``), so torch is imported only inside the builders: the smoke
tests run without it (.ci/lowest-deps.sh).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

FP8_MAX = 448.0  # float8_e4m3fn
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _state(src: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(src / "model.safetensors"))


def _write(src: Path, out: Path, state: dict, qconf: dict | None) -> Path:
    """``state`` as out/model.safetensors, src's config (+ quantization_config) and tokenizer."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != "config.json":
            shutil.copy2(p, out / p.name)
    config = json.loads((src / "config.json").read_text())
    if qconf is not None:
        config["quantization_config"] = qconf
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def _linear_keys(state: dict) -> list[str]:
    return [k for k, v in state.items() if k.endswith("_proj.weight") and v.ndim == 2]


# ----- FP8 (DeepSeek / Qwen3-FP8) -----------------------------------------------------------------
def fp8_quantize(w, block, ue8m0: bool = False):
    """Per-block absmax / 448 (transformers' ``Fp8Quantize``), ragged edges padded then cut."""
    import torch

    n, k = w.shape
    bn, bk = block or (n, k)  # no block size: one scale for the tensor
    padded = torch.zeros(math.ceil(n / bn) * bn, math.ceil(k / bk) * bk)
    padded[:n, :k] = w.float()
    tiles = padded.unflatten(0, (-1, bn)).unflatten(-1, (-1, bk))  # (R, bn, C, bk)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    inv = amax / FP8_MAX
    if ue8m0:
        inv = torch.pow(2.0, torch.ceil(torch.log2(inv)))
    q = (tiles / inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.flatten(2).flatten(0, 1)[:n, :k]
    inv = inv if block else inv.reshape(())
    return q, inv.to(torch.float8_e8m0fnu) if ue8m0 else inv


def build_fp8(src: Path, root: Path, block=(32, 48), ue8m0: bool = False) -> tuple[Path, Path]:
    """(fp8 checkpoint, its dequantized oracle) of the float model in ``src``."""
    import torch
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    state, dense = _state(src), _state(src)
    for key in _linear_keys(state):
        q, inv = fp8_quantize(state[key], block, ue8m0)
        state[key], state[key[: -len("weight")] + "weight_scale_inv"] = q, inv
        dense[key] = _dequantize_fp8_weight(q, inv, list(block) if block else None, torch.float32)
    qconf = {"quant_method": "fp8", "activation_scheme": "dynamic",
             "weight_block_size": list(block) if block else None, "modules_to_not_convert": ["lm_head"]}
    if ue8m0:
        qconf["scale_fmt"] = "ue8m0"
    return _write(src, root / "fp8", state, qconf), _write(src, root / "fp8-dense", dense, None)


# ----- MXFP4 (gpt-oss) ----------------------------------------------------------------------------
def mxfp4_quantize(dense):
    """gpt-oss layout: the model's (E, in, out) as rows (E, out, in), 32 e2m1 values per block
    with one e8m0 exponent (absmax / 6 rounded up to a power of two), low nibble first."""
    import torch

    rows = dense.transpose(1, 2).float()
    experts, r, c = rows.shape
    blocks = rows.reshape(experts, r, c // 32, 32)
    amax = blocks.abs().amax(-1).clamp(min=2.0 ** -100)
    exp = torch.ceil(torch.log2(amax / 6.0))
    scaled = blocks / torch.pow(2.0, exp)[..., None]
    idx = (scaled[..., None] - torch.tensor(FP4_VALUES)).abs().argmin(-1).to(torch.uint8)
    packed = idx[..., 0::2] | (idx[..., 1::2] << 4)
    return packed, (exp + 127).to(torch.uint8)


def build_mxfp4(src: Path, root: Path) -> tuple[Path, Path]:
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    state, dense = _state(src), _state(src)
    for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        blocks, scales = mxfp4_quantize(state.pop(key))
        state[key + "_blocks"], state[key + "_scales"] = blocks, scales
        dense[key] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    qconf = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    return _write(src, root / "mxfp4", state, qconf), _write(src, root / "mxfp4-dense", dense, None)


# ----- compressed-tensors ---------------------------------------------------------------------------
def build_compressed(src: Path, root: Path, fmt: str, weights: dict,
                     name: str | None = None) -> tuple[Path, Path]:
    """Compress every ``*_proj`` Linear with compressed-tensors' own compressor for ``fmt`` and
    ``weights`` (QuantizationArgs); the oracle is that compressor's ``decompress``."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    args = scheme.weights
    compressor = BaseCompressor.get_value_from_registry(fmt)
    state, dense = _state(src), _state(src)
    for key in _linear_keys(state):
        module = key[: -len(".weight")]
        w = state.pop(key)
        scale, zp = _qparams(w, args, calculate_qparams)
        local = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
        if args.symmetric:
            local.pop("weight_zero_point")
        packed = compressor.compress(local, scheme)
        state.update({f"{module}.{k}": v for k, v in packed.items()})
        dense[key] = compressor.decompress(dict(packed), scheme)["weight"].to(torch.float32)
    qconf = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
             "config_groups": {"group_0": {"targets": ["Linear"],
                                           "weights": json.loads(args.model_dump_json()),
                                           "input_activations": None, "output_activations": None,
                                           "format": fmt}},
             "ignore": ["lm_head"]}
    name = name or fmt
    return (_write(src, root / name, state, qconf), _write(src, root / f"{name}-dense", dense, None))


def _qparams(w, args, calculate_qparams):
    """min/max scales and zero points of ``args``' strategy (llm-compressor's minmax observer)."""
    import torch

    strategy = str(getattr(args.strategy, "value", args.strategy))
    if strategy == "group":
        g = w.unflatten(-1, (-1, args.group_size))
        lo, hi = g.amin(-1), g.amax(-1)
    elif strategy == "channel":
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    elif strategy == "block":
        bh, bw = args.block_structure
        pad = torch.zeros(math.ceil(w.shape[0] / bh) * bh, math.ceil(w.shape[1] / bw) * bw)
        pad[: w.shape[0], : w.shape[1]] = w
        tiles = pad.unflatten(0, (-1, bh)).unflatten(-1, (-1, bw))
        lo, hi = tiles.amin(dim=(1, 3)), tiles.amax(dim=(1, 3))
    else:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    return calculate_qparams(lo, hi, args)


# ----- GPTQ (gptqmodel) and AWQ (AutoAWQ GEMM) ---------------------------------------------------
def _minmax_qparams(w, maxq: int, sym: bool):
    """Per (group, output column) scale and zero from the group's rows of ``w`` (in, out): GPTQ's
    and AWQ's min/max quantizer (sym: zero at the middle code)."""
    import torch

    lo, hi = w.min(0).values.clamp(max=0), w.max(0).values.clamp(min=0)
    if sym:
        amax = torch.maximum(lo.abs(), hi)
        scale = (2 * amax / maxq).clamp(min=1e-8)
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        scale = ((hi - lo) / maxq).clamp(min=1e-8)
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale.half(), zero.to(torch.int64)


def gptq_pack(W, bits: int, group_size: int, sym: bool, desc_act: bool, v1: bool, seed: int = 0):
    """A Linear weight (out, in) as gptqmodel's ``pack_original`` writes it: (qweight, qzeros,
    scales, g_idx). desc_act: the groups follow a column permutation (GPTQ's act-order); v1: the
    zeros are stored minus one (AutoGPTQ's checkpoint format), packed as uint32 words."""
    import numpy as np
    import torch

    maxq, pf = 2 ** bits - 1, 32 // bits
    w = W.T.float()  # (in, out)
    n_in = w.shape[0]
    perm = torch.randperm(n_in, generator=torch.Generator().manual_seed(seed)) if desc_act else torch.arange(n_in)
    g_idx = torch.empty(n_in, dtype=torch.int32)
    g_idx[perm] = (torch.arange(n_in) // group_size).to(torch.int32)
    groups = n_in // group_size
    scales = torch.empty(groups, w.shape[1], dtype=torch.float16)
    zeros = torch.empty(groups, w.shape[1], dtype=torch.int64)
    for g in range(groups):
        scales[g], zeros[g] = _minmax_qparams(w[g_idx == g], maxq, sym)
    sf = scales.float()
    q = torch.round((w + (zeros * sf)[g_idx.long()]) / sf[g_idx.long()]).clamp(0, maxq).to(torch.int64)
    qn = q.numpy().astype(np.uint32)
    qweight = np.zeros((n_in // pf, qn.shape[1]), dtype=np.uint32)
    for row in range(qweight.shape[0]):
        for j in range(pf):
            qweight[row] |= qn[row * pf + j] << np.uint32(bits * j)
    zn = (zeros - 1 if v1 else zeros).numpy().astype(np.uint32)  # v1: -1 wraps, as AutoGPTQ's did
    qzeros = np.zeros((groups, zn.shape[1] // pf), dtype=np.uint32)
    for col in range(qzeros.shape[1]):
        for j in range(pf):
            qzeros[:, col] |= zn[:, col * pf + j] << np.uint32(bits * j)
    as_i32 = lambda a: torch.from_numpy(a.view(np.int32).copy())  # noqa: E731
    return as_i32(qweight), as_i32(qzeros), scales, g_idx


def gptq_reference_dequant(qweight, qzeros, scales, g_idx, bits: int, v1: bool):
    """gptqmodel 7.7's ``dequantize_weight`` (after ``convert_gptq_v1_to_v2_format_module`` for v1):
    wf shift buffers, ``& maxq``, ``scales[g_idx] * (weight - zeros[g_idx])`` in the scales' dtype;
    returned (out, in) in float16 (theirs) and float32 (the same formula on float32 scales)."""
    import torch

    pf, maxq = 32 // bits, 2 ** bits - 1
    qzeros = qzeros.clone()
    if v1:
        qzeros += {2: 0x55555555, 4: 0x11111111, 8: 0x01010101}[bits]
    wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
    zeros = torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, pf), wf.unsqueeze(0)).to(torch.int16)
    zeros = torch.bitwise_and(zeros, maxq).reshape(qzeros.shape[0], -1)
    weight = torch.bitwise_and(
        torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, pf, -1), wf.unsqueeze(-1)).to(torch.int16), maxq)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    g = g_idx.long()
    half = scales[g] * (weight - zeros[g])
    full = scales.float()[g] * (weight - zeros[g]).float()
    return half.T.contiguous(), full.T.contiguous()


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack(W, group_size: int):
    """A Linear weight (out, in) as AutoAWQ's ``WQLinear_GEMM.from_linear`` writes it (4-bit,
    zero points, eight codes per int32 word in AWQ_ORDER): (qweight, qzeros, scales)."""
    import torch

    w = W.T.float()  # (in, out)
    groups = w.shape[0] // group_size
    scales = torch.empty(groups, w.shape[1], dtype=torch.float16)
    zeros = torch.empty(groups, w.shape[1], dtype=torch.int64)
    for g in range(groups):
        scales[g], zeros[g] = _minmax_qparams(w[g * group_size:(g + 1) * group_size], 15, False)
    sz = (zeros * scales.float()).repeat_interleave(group_size, 0)
    intweight = torch.round((w + sz) / scales.float().repeat_interleave(group_size, 0)).clamp(0, 15)
    intweight = intweight.to(torch.int32)  # (in, out)
    qweight = torch.zeros(intweight.shape[0], intweight.shape[1] // 8, dtype=torch.int32)
    qzeros = torch.zeros(groups, intweight.shape[1] // 8, dtype=torch.int32)
    z32 = zeros.to(torch.int32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + AWQ_ORDER[i]] << (i * 4)
            qzeros[:, col] |= z32[:, col * 8 + AWQ_ORDER[i]] << (i * 4)
    return qweight, qzeros, scales


def awq_reference_dequant(qweight, qzeros, scales, group_size: int):
    """AutoAWQ 0.2.9's ``dequantize_gemm`` (``unpack_awq``, ``reverse_awq_order``, ``& 0xF``,
    ``(iweight - izeros) * scales``), (out, in) in float16 (theirs) and float32."""
    import torch

    shifts = torch.arange(0, 32, 4)
    iw = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
    iw = iw.view(iw.shape[0], -1)
    iz = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    iz = iz.view(iz.shape[0], -1)
    order = torch.arange(iw.shape[-1], dtype=torch.int32).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].view(-1)
    iw, iz = torch.bitwise_and(iw[:, order], 15), torch.bitwise_and(iz[:, order], 15)
    s = scales.repeat_interleave(group_size, dim=0)
    z = iz.repeat_interleave(group_size, dim=0)
    return ((iw - z) * s).T.contiguous(), ((iw - z).float() * s.float()).T.contiguous()


def build_gptq(src: Path, root: Path, bits=4, group_size=32, sym=False, desc_act=True, v1=False):
    """(GPTQ checkpoint, its oracle dequantized by gptqmodel's rule in float32)."""
    state, dense = _state(src), _state(src)
    for i, key in enumerate(_linear_keys(state)):
        module = key[: -len(".weight")]
        qweight, qzeros, scales, g_idx = gptq_pack(state.pop(key), bits, group_size, sym, desc_act, v1, i)
        state.update({module + ".qweight": qweight, module + ".qzeros": qzeros,
                      module + ".scales": scales, module + ".g_idx": g_idx})
        dense[key] = gptq_reference_dequant(qweight, qzeros, scales, g_idx, bits, v1)[1]
    qconf = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act,
             "sym": sym, "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    name = f"gptq-{'v1' if v1 else 'v2'}"
    return _write(src, root / name, state, qconf), _write(src, root / f"{name}-dense", dense, None)


def build_awq(src: Path, root: Path, group_size=32):
    """(AWQ GEMM checkpoint, its oracle dequantized by AutoAWQ's rule in float32)."""
    state, dense = _state(src), _state(src)
    for key in _linear_keys(state):
        module = key[: -len(".weight")]
        qweight, qzeros, scales = awq_pack(state.pop(key), group_size)
        state.update({module + ".qweight": qweight, module + ".qzeros": qzeros, module + ".scales": scales})
        dense[key] = awq_reference_dequant(qweight, qzeros, scales, group_size)[1]
    qconf = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
             "version": "gemm"}
    return _write(src, root / "awq", state, qconf), _write(src, root / "awq-dense", dense, None)


# ----- fixtures: the bases the merge and attach tests share -----------------------------------------
INT4_GROUP_ASYM = dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
BASES = {
    # blocks that leave ragged rows and columns on every Llama matrix (64, 32, 96 by 64, 96)
    "fp8_ragged_blocks": lambda src, root: build_fp8(src, root, (48, 40)),
    "fp8_ue8m0_128": lambda src, root: build_fp8(src, root, (128, 128), ue8m0=True),
    "ct_int4_group_asym": lambda src, root: build_compressed(src, root, "pack-quantized",
                                                             INT4_GROUP_ASYM),
    "ct_int8_channel": lambda src, root: build_compressed(
        src, root, "pack-quantized", dict(num_bits=8, type="int", symmetric=True, strategy="channel")),
    "ct_fp8_channel": lambda src, root: build_compressed(
        src, root, "float-quantized", dict(num_bits=8, type="float", symmetric=True,
                                           strategy="channel")),
    "ct_int8_naive_tensor": lambda src, root: build_compressed(
        src, root, "naive-quantized", dict(num_bits=8, type="int", symmetric=True, strategy="tensor")),
    # GPTQ: v2 asymmetric with act-order (desc_act) groups; v1 (zeros stored minus one) symmetric
    "gptq_v2_asym_desc_act": lambda src, root: build_gptq(src, root, sym=False, desc_act=True, v1=False),
    "gptq_v1_sym": lambda src, root: build_gptq(src, root, sym=True, desc_act=False, v1=True),
    "gptq_v1_asym_desc_act_8bit": lambda src, root: build_gptq(src, root, bits=8, sym=False,
                                                               desc_act=True, v1=True),
    "awq_gemm": lambda src, root: build_awq(src, root),
}


@pytest.fixture(scope="module")
def quant_base(tiny_models, tmp_path_factory):
    made = {}

    def make(name):
        if name not in made:
            made[name] = BASES[name](tiny_models["llama"], tmp_path_factory.mktemp(name))
        return made[name]

    return make


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """A tiny gpt-oss (4 experts) in float32, its MXFP4 checkpoint and the dequantized oracle."""
    from transformers import GptOssConfig

    from tests.conftest import VOCAB, build_model

    cfg = GptOssConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                       sliding_window=32, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    root = tmp_path_factory.mktemp("gpt_oss")
    return build_mxfp4(build_model(cfg, root / "float"), root)
