"""Quantized checkpoints read as float tensors: the dispatch on ``quantization_config.quant_method``
(:func:`group_logical`, :func:`dequantize`) and the bitsandbytes format. Each quantized weight is
grouped with its side tensors into one logical tensor and dequantized on read, one tensor and its
scales at a time (spec 6.4: merging into a dequantized copy is what stays closest to the trained
model). The other formats: ``fp8`` (io/checkpoint/fp8.py), ``mxfp4`` (io/checkpoint/mxfp4.py),
``compressed-tensors`` (io/checkpoint/compressed.py), ``gptq`` (io/checkpoint/gptq.py: v1 and v2
checkpoint formats, desc_act's g_idx), ``awq`` (io/checkpoint/awq.py: GEMM packing); any other
method is refused by name.

bitsandbytes (``quant_method == "bitsandbytes"``):

- 4-bit: ``W.weight`` (packed uint8) + ``W.weight.absmax``, ``.quant_map``, optional ``.nested_*``
  and ``W.weight.quant_state.bitsandbytes__{nf4,fp4}`` (JSON: shape, dtype, blocksize).
  Dequantized in plain torch (io/checkpoint/fourbit.py, equal to bitsandbytes' dequantize_4bit; bitsandbytes
  is not needed). Blocks are blocks of the flattened weight, as bitsandbytes quantized them (its
  AVX-512 CPU kernel reads 2-D absmaxes per row, wrong for an input size that is a multiple of 16
  but not of 64; this reader is not).
- 8-bit (LLM.int8): ``W.weight`` (int8) + ``W.SCB`` (per-row absmax), optional ``W.weight_format``:
  ``W = int8 * SCB / 127`` (bitsandbytes' ``int8_vectorwise_dequant``).
"""

from __future__ import annotations

import json

import torch

from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.checkpoint.awq import dequantize_awq, group_awq
from adapterctl.io.checkpoint.compressed import dequantize_compressed, group_compressed
from adapterctl.io.checkpoint.fourbit import dequantize_stored
from adapterctl.io.checkpoint.fp8 import dequantize_fp8, group_fp8
from adapterctl.io.checkpoint.gptq import dequantize_gptq, group_gptq
from adapterctl.io.checkpoint.mxfp4 import dequantize_mxfp4, group_mxfp4
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor
from adapterctl.io.dtypes import WRITABLE

QS_SUFFIXES = (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")


#: the quant_methods read here; the first is loaded quantized by attach, the others dequantized
METHODS = ("bitsandbytes", "fp8", "mxfp4", "compressed-tensors", "gptq", "awq")


def quant_method(config: dict) -> str | None:
    """config.json's ``quantization_config.quant_method`` (None: not quantized)."""
    q = config.get("quantization_config")
    return str(q.get("quant_method")) if isinstance(q, dict) else None


def is_bnb_quantized(config: dict) -> bool:
    return quant_method(config) == "bitsandbytes"


def dequantized_on_read(config: dict) -> bool:
    """A base whose weights only this reader turns into floats (attach loads it through it)."""
    return quant_method(config) in METHODS[1:]


def group_logical(
    stored: list[StoredTensor], read, float_dtype: torch.dtype, config: dict, where: str
) -> list[StoredTensor]:
    """The checkpoint's logical tensors: each quantized weight as one float tensor of
    ``float_dtype`` (dequantized by :func:`dequantize`); ``where`` names config.json in errors."""
    method = quant_method(config)
    if method is None:
        return stored
    qconf = config["quantization_config"]
    if method == "bitsandbytes":
        return group_quantized(stored, read, float_dtype)
    # the model's dtype, not the most common float among the tensors: float32 scales outnumber
    # the few unquantized tensors (norms, embeddings) of a bfloat16 FP8 checkpoint
    named = config.get("dtype") or config.get("torch_dtype")
    float_dtype = getattr(torch, named) if named in WRITABLE else float_dtype
    if method == "fp8":
        return group_fp8(stored, qconf, where, float_dtype)
    if method == "mxfp4":
        return group_mxfp4(stored, float_dtype)
    if method == "compressed-tensors":
        return group_compressed(stored, qconf, where, read, float_dtype)
    if method == "gptq":
        return group_gptq(stored, qconf, where, float_dtype)
    if method == "awq":
        return group_awq(stored, qconf, where, float_dtype)
    raise UnsupportedError(
        f"{where}: quantization_config.quant_method {method!r} is not "
        f"supported (adapterctl reads {', '.join(METHODS)} checkpoints)",
        hint="Use the unquantized model (or one of those formats) as the base.",
    )


def _qs_json(t: torch.Tensor, key: str) -> dict:
    try:
        return json.loads(bytes(t.to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidAdapterError(f"{key}: quant state is not valid JSON") from err


def group_quantized(stored: list[StoredTensor], read, float_dtype: torch.dtype) -> list[StoredTensor]:
    """Replace each quantized weight and its side tensors by one logical float tensor (``quant``
    and ``parts`` set); ``read(stored)`` returns a tensor's values (for the small quant states)."""
    grouping = Grouping(stored)
    by_key = grouping.by_key
    for s in stored:
        for suffix in QS_SUFFIXES:
            if s.key.endswith(suffix):
                wkey = s.key[: -len(suffix)]
                qs = _qs_json(read(s), s.key)
                parts = tuple(x for k, x in by_key.items() if k.startswith(wkey + ".") or k == wkey)
                dtype = getattr(torch, qs.get("dtype", "float32"))
                grouping.logical_weight(
                    by_key[wkey], parts, quant="4bit", dtype=dtype, shape=tuple(qs["shape"])
                )
        if s.key.endswith(".SCB"):
            wkey = s.key[: -len(".SCB")] + ".weight"
            if wkey in by_key and by_key[wkey].dtype == torch.int8:
                fmt = by_key.get(s.key[: -len(".SCB")] + ".weight_format")
                parts = (by_key[wkey], s) + ((fmt,) if fmt else ())
                grouping.logical_weight(by_key[wkey], parts, quant="8bit", dtype=float_dtype)
    return grouping.tensors()


def dequantize(stored: StoredTensor, read) -> torch.Tensor:
    """The float tensor of a grouped quantized weight: FP8, MXFP4, compressed-tensors, GPTQ and AWQ ones in
    float32, unrounded, so that merge and attach round once to their output dtype (``--dtype
    float32`` keeps every bit of the dequantized value); bitsandbytes ones in their dtype."""
    other = {
        "fp8": dequantize_fp8,
        "mxfp4": dequantize_mxfp4,
        "compressed": dequantize_compressed,
        "gptq": dequantize_gptq,
        "awq": dequantize_awq,
    }
    if stored.quant in other:
        return other[stored.quant](stored, read)
    parts = {p.key: read(p) for p in stored.parts}
    if stored.quant == "8bit":
        scb = next(v for k, v in parts.items() if k.endswith(".SCB"))
        q = parts[stored.key]
        return (q.to(torch.float32) * (scb.to(torch.float32).view(-1, 1) / 127.0)).to(stored.dtype)
    packed = parts.pop(stored.key)
    tensors = {k[len(stored.key) + 1 :]: v for k, v in parts.items()}
    qs_key = next(k for k in tensors if k.startswith("quant_state."))
    qs = _qs_json(tensors.pop(qs_key), f"{stored.key}.{qs_key}")
    try:  # in plain torch (io/checkpoint/fourbit.py): blocks of the flattened weight, as bitsandbytes stores them
        return dequantize_stored(packed, tensors, qs).to(stored.dtype)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise InvalidAdapterError(
            f"{stored.key}: its 4-bit quant state cannot be read ({err})",
            hint="The checkpoint is incomplete or from an unknown bitsandbytes format.",
        ) from err
