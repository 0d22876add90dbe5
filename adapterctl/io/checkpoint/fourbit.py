"""bitsandbytes' 4-bit block formats (NF4, FP4) in plain torch: quantize, dequantize, round trip.

What ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` compute on the CPU (read from
bitsandbytes 0.50.2: ``functional.get_4bit_type``, ``backends/default/ops.py`` quantize_4bit,
``backends/cpu/ops.py`` dequantize_4bit, ``functional.create_dynamic_map`` and
``quantize_blockwise`` for double quantization), so that a merge can reproduce the weights a
QLoRA adapter was trained against without bitsandbytes installed. tests/io/checkpoint/test_fourbit.py checks
every function here against bitsandbytes, bit for bit.

The format (QLoRA paper, Dettmers et al. 2023, section 3): the tensor is flattened and cut into
blocks of ``blocksize`` values (64 in transformers' ``Linear4bit``); each block keeps its absmax
(float32) and each value the index of the nearest entry of a 16-value code after dividing by the
absmax. Double quantization (``bnb_4bit_use_double_quant``) stores the absmaxes themselves in 8
bits: minus their mean, in blocks of 256, on bitsandbytes' dynamic 8-bit map.
"""

from __future__ import annotations

from functools import cache

import torch

QUANT_TYPES = ("nf4", "fp4")
#: transformers' Linear4bit (bitsandbytes Params4bit) block size
BLOCKSIZE = 64
#: double quantization: blocks of absmaxes (bitsandbytes quantize_4bit, compress_statistics)
NESTED_BLOCKSIZE = 256

# NF4: quantiles of N(0, 1) with an exact zero (QLoRA section 3, "4-bit NormalFloat"); the
# float32 values bitsandbytes hard-codes (get_4bit_type("nf4")).
_NF4 = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# FP4 (e2m1, bias 2, bitsandbytes' own layout): values in bit-pattern order, divided by the
# largest (12) in float32 as get_4bit_type does. Index 8 is +0 there too (bitsandbytes writes the
# integer -0), which decides the index two equal zeros sort to.
_FP4 = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)


@cache
def code_4bit(quant_type: str) -> torch.Tensor:
    """The 16 code values of ``quant_type``, in index order (float32, CPU)."""
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"4-bit quant type must be one of {QUANT_TYPES}, got {quant_type!r}")
    data = torch.tensor(_NF4 if quant_type == "nf4" else _FP4, dtype=torch.float32)
    return data.div_(data.abs().max())


@cache
def _bounds(quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints between neighbouring code values (sorted), and sorted position -> index."""
    code = code_4bit(quant_type)
    order = torch.argsort(code)
    return (code[order[:-1]] + code[order[1:]]) / 2, order


@cache
def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(True, 7, 8)): for each decimal
    exponent -6..0, means of evenly spaced fractions in [0.1, 1], both signs, then 0 and 1; sorted.
    Computed like bitsandbytes (float32 linspace and means, Python-float scaling)."""
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0, 1.0]
    data += [0] * (256 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def _blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-block absmax, values scaled into [-1, 1]); the last block may be short."""
    n = flat.numel()
    full = n - n % blocksize
    head = flat[:full].reshape(-1, blocksize)
    absmax = head.abs().max(dim=-1)[0]
    scaled = torch.clamp(head * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if full < n:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    return absmax, scaled


def quantize_4bit(
    W: torch.Tensor, quant_type: str, blocksize: int = BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 of shape (ceil(n/2), 1), float32 absmax per block) as bitsandbytes stores them.
    Values are widened to float32 first (so a bf16 tensor quantizes as its float32 copy)."""
    bounds, order = _bounds(quant_type)
    absmax, scaled = _blocks(W.reshape(-1).to(torch.float32), blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    idx = order[torch.bucketize(scaled, bounds, out_int32=True)].to(torch.uint8)
    return ((idx[::2] << 4) | idx[1::2]).unsqueeze(1), absmax


def dequantize_4bit(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    quant_type: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    blocksize: int = BLOCKSIZE,
) -> torch.Tensor:
    """code[index] * absmax of its block, in float32, rounded once to ``dtype``."""
    flat = packed.reshape(-1).to(torch.int64)
    idx = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)
    n = 1
    for d in shape:
        n *= d
    # FP4's index 8 (sign bit, zero magnitude) is +0 here as in get_4bit_type's table; bitsandbytes'
    # own CPU kernels disagree on that sign (scalar C: -0, AVX-512 and torch paths: +0)
    values = code_4bit(quant_type)[idx[:n]]
    scale = absmax.to(torch.float32).repeat_interleave(blocksize)[:n]
    return (values * scale).reshape(shape).to(dtype)


#: bitsandbytes' CPU 8-bit blockwise quantizer (csrc/cpu_ops.cpp, build_quantize_lut and
#: norm_to_lut_index) looks the nearest code entry up in a table of 65536 evenly spaced bins of
#: [-1, 1], not by exact search: reproduced as is, so double-quantized absmaxes match it.
_LUT_SIZE = 65536


@cache
def _dynamic_lut() -> torch.Tensor:
    code = dynamic_map()
    mid = 0.5 * (code[:-1] + code[1:])
    bins = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32)) / float(_LUT_SIZE - 1)
    return torch.searchsorted(mid, bins)  # how many midpoints lie below each bin


def quantize_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: (uint8 indices, float32 absmax per 256-block, float32 offset) of
    ``absmax - mean`` on the dynamic map (bitsandbytes quantize_4bit with compress_statistics)."""
    offset = absmax.mean()
    flat = (absmax - offset).reshape(-1)
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, -n % NESTED_BLOCKSIZE)).reshape(-1, NESTED_BLOCKSIZE)
    am2 = blocks.abs().max(dim=-1)[0]
    inv = torch.where(am2 == 0, torch.zeros_like(am2), 1.0 / am2)
    scaled = torch.clamp(blocks * inv.view(-1, 1), -1.0, 1.0)
    pos = ((scaled + 1.0) * 0.5 * float(_LUT_SIZE - 1) + 0.5).to(torch.int64)
    idx = torch.where(am2.view(-1, 1) == 0, 0, _dynamic_lut()[pos])  # an all-zero block: index 0
    idx = idx.reshape(-1)[:n].to(torch.uint8)
    return idx, am2, offset


def dequantize_absmax(idx: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    n = idx.numel()
    values = dynamic_map()[idx.to(torch.int64)]
    return values * absmax2.repeat_interleave(NESTED_BLOCKSIZE)[:n] + offset


def dequantize_stored(packed: torch.Tensor, tensors: dict[str, torch.Tensor], qs: dict) -> torch.Tensor:
    """A 4-bit weight as a bitsandbytes checkpoint stores it: ``packed`` (W.weight), ``tensors``
    its side tensors by suffix (``absmax``, with double quantization ``nested_absmax`` and
    ``nested_quant_map``), ``qs`` the JSON of ``quant_state.bitsandbytes__*`` (quant_type,
    blocksize, dtype, shape, nested_blocksize, nested_offset). As bitsandbytes' QuantState.from_dict
    and dequantize_4bit read them: nested absmaxes are map[index] * nested absmax + offset, and
    the 4-bit values are looked up in the quant type's own code."""
    absmax = tensors["absmax"]
    if "nested_absmax" in tensors:
        n = absmax.numel()
        scale = tensors["nested_absmax"].to(torch.float32).repeat_interleave(int(qs["nested_blocksize"]))[:n]
        code = tensors["nested_quant_map"].to(torch.float32)
        absmax = code[absmax.reshape(-1).to(torch.int64)] * scale + torch.tensor(
            float(qs["nested_offset"]), dtype=torch.float32
        )
    dtype = getattr(torch, str(qs.get("dtype", "float32")))
    return dequantize_4bit(
        packed.view(torch.uint8),
        absmax.to(torch.float32),
        qs["quant_type"],
        tuple(qs["shape"]),
        dtype,
        int(qs["blocksize"]),
    )


#: values quantized at a time by round_trip_4bit (a multiple of every block size): bounds the
#: float32 temporaries to a few times 16 MB whatever the tensor's size
CHUNK = 1 << 22


def round_trip_4bit(
    W: torch.Tensor, quant_type: str, double_quant: bool = False, blocksize: int = BLOCKSIZE
) -> torch.Tensor:
    """dequantize(quantize(W)) in W's dtype: the weight a layer quantized by bitsandbytes
    (``Linear4bit``, quant state dtype = the loaded weight's dtype) computes with. Blocks are
    independent, so the tensor is done in chunks of whole blocks (same result as all at once)."""
    flat = W.reshape(-1)
    steps = range(0, flat.numel(), CHUNK)
    parts = [quantize_4bit(flat[i : i + CHUNK], quant_type, blocksize) for i in steps]
    absmaxes = [a for _, a in parts]
    if double_quant:  # the absmaxes of the whole tensor share one offset (their mean)
        whole = dequantize_absmax(*quantize_absmax(torch.cat(absmaxes)))
        absmaxes = list(whole.split([a.numel() for a in absmaxes]))
    out = torch.empty_like(flat)
    for i, (packed, _), absmax in zip(steps, parts, absmaxes):
        n = min(CHUNK, flat.numel() - i)
        out[i : i + n] = dequantize_4bit(packed, absmax, quant_type, (n,), W.dtype, blocksize)
    return out.reshape(W.shape)
