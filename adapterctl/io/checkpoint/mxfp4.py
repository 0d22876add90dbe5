"""MXFP4 checkpoints (``quantization_config.quant_method == "mxfp4"``: gpt-oss): the fused expert
stacks are stored as ``<name>_blocks`` + ``<name>_scales`` and read back as the dense ``<name>``
the model holds (``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``), spec 6.4.

The rule (transformers 5.24 ``integrations/mxfp4.py``, ``convert_moe_packed_tensors``, the
dequantization ``Mxfp4Config(dequantize=True)`` loads with):

- ``_blocks``: uint8 ``(E, R, G, 16)``: 32 e2m1 (FP4) values per block of a row, two per byte,
  the low nibble first; nibble -> ``[0, .5, 1, 1.5, 2, 3, 4, 6]``, bit 3 the sign;
- ``_scales``: uint8 ``(E, R, G)``: e8m0 exponents, ``value = fp4 * 2 ** (scale - 127)``;
- the rows ``(E, R, G * 32)`` are transposed to the model's ``(E, G * 32, R)``
  (gate_up_proj: ``(E, hidden, 2 * intermediate)``, down_proj: ``(E, intermediate, hidden)``).
"""

from __future__ import annotations

import torch

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCKS, SCALES = "_blocks", "_scales"
HINT = "The MXFP4 checkpoint is incomplete or corrupt; download it again."


def _check(blocks: StoredTensor, scales: StoredTensor | None) -> StoredTensor:
    """``scales``, checked against ``blocks``."""
    if scales is None:
        raise InvalidAdapterError(
            f"{blocks.file}: {blocks.key} has no {blocks.key[: -len(BLOCKS)]}{SCALES}", hint=HINT
        )
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise InvalidAdapterError(
            f"{blocks.file}: {blocks.key} ({blocks.dtype}) and {scales.key} "
            f"({scales.dtype}) must both be uint8 (packed e2m1, e8m0)",
            hint=HINT,
        )
    if len(blocks.shape) != 4 or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise InvalidAdapterError(
            f"{scales.file}: {scales.key} has shape {list(scales.shape)} "
            f"and {blocks.key} {list(blocks.shape)}; expected blocks "
            "(experts, rows, groups, 16) and scales (experts, rows, groups)",
            hint=HINT,
        )
    return scales


def group_mxfp4(stored: list[StoredTensor], float_dtype: torch.dtype) -> list[StoredTensor]:
    """Each ``_blocks``/``_scales`` pair becomes one logical dense tensor under the model's name."""
    grouping = Grouping(stored)
    for s in stored:
        if s.key.endswith(SCALES) and s.key[: -len(SCALES)] + BLOCKS not in grouping.by_key:
            raise InvalidAdapterError(f"{s.file}: {s.key} has no {s.key[: -len(SCALES)]}{BLOCKS}", hint=HINT)
        if not s.key.endswith(BLOCKS):
            continue
        name = s.key[: -len(BLOCKS)]
        scales = _check(s, grouping.by_key.get(name + SCALES))
        experts, rows, groups, width = s.shape
        shape = (experts, groups * width * 2, rows)
        grouping.logical_weight(s, (s, scales), quant="mxfp4", dtype=float_dtype, key=name, shape=shape)
    return grouping.tensors()


def dequantize_mxfp4(stored: StoredTensor, read) -> torch.Tensor:
    """The dense ``(E, G * 32, R)`` stack in float32, one expert at a time (every e2m1 value times
    a power of two is exact in float32 and, in range, in bfloat16); the caller rounds it."""
    b_part, s_part = stored.parts
    blocks, exps = read(b_part), read(s_part).to(torch.int32) - 127
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    experts, rows, groups, width = blocks.shape
    out = torch.empty(stored.shape, dtype=torch.float32)
    for e in range(experts):
        blk = blocks[e]
        vals = torch.empty(rows, groups, width * 2, dtype=torch.float32)
        vals[..., 0::2] = lut[(blk & 0x0F).long()]
        vals[..., 1::2] = lut[(blk >> 4).long()]
        torch.ldexp(vals, exps[e].unsqueeze(-1), out=vals)
        out[e] = vals.reshape(rows, groups * width * 2).T
    return out
