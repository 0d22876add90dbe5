"""Fine-grained FP8 checkpoints (``quantization_config.quant_method == "fp8"``: DeepSeek-V3,
Qwen3-FP8 and what transformers' ``FineGrainedFP8Config`` saves): group each float8 weight with its
``weight_scale_inv`` and dequantize it on read (spec 6.4: merge into the dequantized base).

The rule (transformers 5.24 ``integrations/finegrained_fp8.py``, the ``_dequantize_fp8_weight`` of
its backward pass and its kernels): with ``weight_block_size = [bn, bk]`` the scale of element
``(i, j)`` is ``weight_scale_inv[i // bn, j // bk]`` and ``W = float(q) * scale``. The scale grid is
``(ceil(N / bn), ceil(K / bk))``: a ragged last block (N or K not a multiple) uses the last scale
row/column. Without a block size the scale is one number per tensor. Scales are float32 or ue8m0
(``float8_e8m0fnu``, powers of two, ``scale_fmt: "ue8m0"``); expert stacks ``(E, N, K)`` carry
``(E, ceil(N/bn), ceil(K/bk))`` scales (``*_proj`` + ``*_proj_scale_inv``). Static activation scales
(``activation_scale``, ``input_scale``) only serve the FP8 matmul and are dropped.
"""

from __future__ import annotations

import math

import torch

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
#: ue8m0 scales need torch >= 2.7 (float8_e8m0fnu); older torch reads float32 scales only
SCALE_DTYPES = (
    torch.float32,
    torch.bfloat16,
    torch.float16,
    *filter(None, [getattr(torch, "float8_e8m0fnu", None)]),
)
SCALE_SUFFIX = "_scale_inv"
ACTIVATION_SUFFIXES = (".activation_scale", ".input_scale")


def block_size(qconf: dict, where: str) -> tuple[int, int] | None:
    """``weight_block_size`` as (bn, bk); None for per-tensor scales."""
    value = qconf.get("weight_block_size")
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise InvalidAdapterError(
            f"{where}: quantization_config.weight_block_size is {value!r}, "
            "expected two positive integers such as [128, 128]",
            hint="Fix config.json or re-export the FP8 checkpoint.",
        )
    return int(value[0]), int(value[1])


def expected_scale_shape(shape: tuple[int, ...], block: tuple[int, int] | None) -> tuple[int, ...]:
    if block is None:
        return ()
    *lead, n, k = shape
    return (*lead, math.ceil(n / block[0]), math.ceil(k / block[1]))


def _check(w: StoredTensor, scale: StoredTensor, block: tuple[int, int] | None) -> None:
    if scale.dtype not in SCALE_DTYPES:
        raise InvalidAdapterError(
            f"{scale.file}: {scale.key} has dtype {scale.dtype}, expected "
            "float32 or ue8m0 (float8_e8m0fnu) scales",
            hint="The FP8 checkpoint is corrupt; download it again.",
        )
    if len(w.shape) < 2:
        raise InvalidAdapterError(
            f"{w.file}: {w.key} is float8 with shape {list(w.shape)}, "
            "expected a matrix (or a stack of expert matrices)",
            hint="The FP8 checkpoint is corrupt; download it again.",
        )
    want = expected_scale_shape(w.shape, block)
    ok = math.prod(scale.shape) == 1 if block is None else tuple(scale.shape) == want
    if not ok:
        shown = (
            "one number (no weight_block_size)"
            if block is None
            else f"{list(want)} (ceil({list(w.shape[-2:])} / weight_block_size {list(block)}))"
        )
        raise InvalidAdapterError(
            f"{scale.file}: {scale.key} has shape {list(scale.shape)}, "
            f"expected {shown} for {w.key} {list(w.shape)}",
            hint="config.json's weight_block_size does not match the checkpoint, or the file is corrupt.",
        )


def group_fp8(
    stored: list[StoredTensor], qconf: dict, where: str, float_dtype: torch.dtype
) -> list[StoredTensor]:
    """Each float8 weight and its scale become one logical ``float_dtype`` tensor."""
    block = block_size(qconf, where)
    grouping = Grouping(stored)
    for s in stored:
        if s.key.endswith(SCALE_SUFFIX):
            wkey = s.key[: -len(SCALE_SUFFIX)]
            w = grouping.by_key.get(wkey)
            if w is None or w.dtype not in FP8_DTYPES:
                found = "is missing" if w is None else f"is {w.dtype}, not float8"
                raise InvalidAdapterError(
                    f"{s.file}: {s.key} scales {wkey}, which {found}",
                    hint="The FP8 checkpoint is incomplete or corrupt.",
                )
            _check(w, s, block)
            grouping.logical_weight(w, (w, s), quant="fp8", dtype=float_dtype, scheme=(("block", block),))
    for s in stored:
        if s.dtype in FP8_DTYPES and not grouping.grouped(s.key):
            raise InvalidAdapterError(
                f"{s.file}: {s.key} is float8 but has no {s.key}{SCALE_SUFFIX}",
                hint="The FP8 checkpoint is incomplete (a missing shard?); download it again.",
            )
        if s.key.endswith(ACTIVATION_SUFFIXES):
            grouping.drop(s.key)
    return grouping.tensors()


def dequantize_fp8(stored: StoredTensor, read) -> torch.Tensor:
    """``float(q) * scale`` per block, in float32 (the caller rounds once, to its output dtype)."""
    w_part, s_part = stored.parts
    block = dict(stored.scheme)["block"]
    w = read(w_part).to(torch.float32)
    scale = read(s_part).to(torch.float32)
    if block is None:
        return w.mul_(scale.reshape(()))
    bn, bk = block
    n, k = w.shape[-2:]
    # expand the scales over rows only (small), and over columns through a view of the weight,
    # so no second weight-sized float32 tensor is made
    rows = scale.repeat_interleave(bn, dim=-2)[..., :n, :]
    full = k // bk
    w[..., : full * bk].unflatten(-1, (full, bk)).mul_(rows[..., :full, None])
    if k % bk:
        w[..., full * bk :].mul_(rows[..., full:])
    return w
