"""io/checkpoint/fourbit.py against bitsandbytes (the oracle, CPU): the same packed 4-bit indices, the same
block absmaxes (double-quantized too), the same dequantized values, bit for bit.

The one difference allowed is the sign of an FP4 zero, which bitsandbytes' own CPU kernels
disagree on (scalar C: -0.0, AVX-512 and pure torch: +0.0): dequantized tensors are compared
after ``+ 0.0``, which turns -0.0 into +0.0 and changes nothing else.

bitsandbytes' blocks are blocks of the flattened tensor (quantize_4bit, the CUDA kernels, its torch
reference). Its AVX-512 CPU dequantize_4bit (0.50.2, csrc/cpu_ops.cpp dequantizeBlockwise4bitCpu)
reads a 2-D weight's absmaxes row by row instead, which picks the wrong scale when the last
dimension is a multiple of 16 but not of 64 ((64, 96) here): the oracle dequantizes the flat
tensor, where every bitsandbytes path agrees."""

from __future__ import annotations

import copy

import pytest
import torch

from adapterctl.io.checkpoint import fourbit

bnb = pytest.importorskip("bitsandbytes.functional")

SHAPES = [(64, 128), (33, 70), (7, 9), (1, 4097), (256, 1000), (3, 5, 8), (64, 96), (5, 96)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def sample(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(shape, generator=g) * 0.05).to(dtype)
    W.view(-1)[3] = 0.0  # exact zeros land on the code's zero(s)
    W.view(-1)[5] = W.abs().max() * 4  # an outlier: the block's absmax, code value +-1
    return W


def bnb_dequantize(packed, state):
    """bitsandbytes' dequantize_4bit of the flat tensor, reshaped (module docstring)."""
    flat = copy.copy(state)
    flat.shape = torch.Size([state.shape.numel()])
    return bnb.dequantize_4bit(packed, flat).reshape(state.shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t + 0.0
    return t.view({torch.float32: torch.int32}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_and_round_trip_equal_bitsandbytes(quant_type, dtype, shape):
    W = sample(shape, dtype)
    packed, state = bnb.quantize_4bit(W, blocksize=64, quant_type=quant_type)
    ours_packed, ours_absmax = fourbit.quantize_4bit(W, quant_type)
    assert torch.equal(ours_packed, packed)
    assert torch.equal(ours_absmax, state.absmax)
    ref = bnb_dequantize(packed, state)
    got = fourbit.round_trip_4bit(W, quant_type)
    assert got.dtype == ref.dtype == dtype and got.shape == W.shape
    assert torch.equal(bits(got), bits(ref))
    assert not torch.equal(got, W)  # the round trip does change the weights


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(1024, 1100)])
def test_double_quant_equals_bitsandbytes(quant_type, dtype, shape):
    W = sample(shape, dtype, seed=1)
    packed, state = bnb.quantize_4bit(W, blocksize=64, quant_type=quant_type, compress_statistics=True)
    idx, absmax2, offset = fourbit.quantize_absmax(fourbit.quantize_4bit(W, quant_type)[1])
    assert torch.equal(idx, state.absmax)
    assert torch.equal(absmax2, state.state2.absmax)
    assert torch.equal(offset, state.offset)
    assert torch.equal(fourbit.dynamic_map(), state.state2.code)
    ref = bnb_dequantize(packed, state)
    got = fourbit.round_trip_4bit(W, quant_type, double_quant=True)
    assert torch.equal(bits(got), bits(ref))
    if W.numel() > 64 * 4:  # several blocks: the absmaxes really are approximated
        assert not torch.equal(got, fourbit.round_trip_4bit(W, quant_type))


def test_codes_equal_bitsandbytes():
    for quant_type in ("nf4", "fp4"):
        assert torch.equal(fourbit.code_4bit(quant_type), bnb.get_4bit_type(quant_type, device="cpu"))
    assert torch.equal(fourbit.dynamic_map(), bnb.create_dynamic_map())


@pytest.mark.parametrize("double_quant", [False, True])
def test_chunks_change_nothing(monkeypatch, double_quant):
    W = sample((300, 130), torch.float32, seed=2)  # 39000 values: chunks of 1024, a short last one
    whole = fourbit.round_trip_4bit(W, "nf4", double_quant)
    monkeypatch.setattr(fourbit, "CHUNK", 1024)
    chunked = fourbit.round_trip_4bit(W, "nf4", double_quant)
    assert torch.equal(bits(whole), bits(chunked))
    packed, state = bnb.quantize_4bit(W, blocksize=64, quant_type="nf4",
                                      compress_statistics=double_quant)
    assert torch.equal(bits(chunked), bits(bnb_dequantize(packed, state)))


def test_unknown_quant_type():
    with pytest.raises(ValueError, match="nf4"):
        fourbit.code_4bit("int3")


def test_flat_blocks_are_bitsandbytes_own_where_its_kernels_agree():
    """Where the 2-D AVX-512 kernel is right (last dimension a multiple of 64, or not of 16), its
    result is the flat one: the oracle's reshaping changes nothing there."""
    for shape in [(64, 128), (33, 70), (256, 1000)]:
        W = sample(shape, torch.float32)
        packed, state = bnb.quantize_4bit(W, blocksize=64, quant_type="nf4")
        assert torch.equal(bnb.dequantize_4bit(packed, state), bnb_dequantize(packed, state))
