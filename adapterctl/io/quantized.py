"""bitsandbytes-quantized checkpoints (``quantization_config.quant_method == "bitsandbytes"``):
group each quantized weight with its side tensors and dequantize it on read (spec 6.4: merging
into a dequantized copy is what stays closest to the trained model).

- 4-bit: ``W.weight`` (packed uint8) + ``W.weight.absmax``, ``.quant_map``, optional ``.nested_*``
  and ``W.weight.quant_state.bitsandbytes__{nf4,fp4}`` (JSON: shape, dtype, blocksize).
  Dequantized in plain torch (io/fourbit.py, equal to bitsandbytes' dequantize_4bit; bitsandbytes
  is not needed). Blocks are blocks of the flattened weight, as bitsandbytes quantized them (its
  AVX-512 CPU kernel reads 2-D absmaxes per row, wrong for an input size that is a multiple of 16
  but not of 64; this reader is not).
- 8-bit (LLM.int8): ``W.weight`` (int8) + ``W.SCB`` (per-row absmax), optional ``W.weight_format``:
  ``W = int8 * SCB / 127`` (bitsandbytes' ``int8_vectorwise_dequant``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.fourbit import dequantize_stored
from adapterctl.io.stored import StoredTensor

QS_SUFFIXES = (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")


def is_bnb_quantized(config: dict) -> bool:
    q = config.get("quantization_config")
    return isinstance(q, dict) and q.get("quant_method") == "bitsandbytes"


def _qs_json(t: torch.Tensor, key: str) -> dict:
    try:
        return json.loads(bytes(t.to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidAdapterError(f"{key}: quant state is not valid JSON") from err


def group_quantized(stored: list[StoredTensor], read, float_dtype: torch.dtype) -> list[StoredTensor]:
    """Replace each quantized weight and its side tensors by one logical float tensor (``quant``
    and ``parts`` set); ``read(stored)`` returns a tensor's values (for the small quant states)."""
    by_key = {s.key: s for s in stored}
    logical: dict[str, StoredTensor] = {}
    consumed: set[str] = set()
    for s in stored:
        for suffix in QS_SUFFIXES:
            if s.key.endswith(suffix):
                wkey = s.key[: -len(suffix)]
                qs = _qs_json(read(s), s.key)
                parts = tuple(x for k, x in by_key.items() if k.startswith(wkey + ".") or k == wkey)
                logical[wkey] = replace(by_key[wkey], dtype=getattr(torch, qs.get("dtype", "float32")),
                                        shape=tuple(qs["shape"]), quant="4bit", parts=parts)
                consumed.update(p.key for p in parts)
        if s.key.endswith(".SCB"):
            wkey = s.key[: -len(".SCB")] + ".weight"
            if wkey in by_key and by_key[wkey].dtype == torch.int8:
                fmt = by_key.get(s.key[: -len(".SCB")] + ".weight_format")
                parts = (by_key[wkey], s) + ((fmt,) if fmt else ())
                logical[wkey] = replace(by_key[wkey], dtype=float_dtype, quant="8bit", parts=parts)
                consumed.update(p.key for p in parts)
    out = []
    for s in stored:
        if s.key in logical:
            out.append(logical[s.key])
        elif s.key not in consumed:
            out.append(s)
    return out


def dequantize(stored: StoredTensor, read) -> torch.Tensor:
    """The float tensor of a grouped quantized weight (float32 maths, returned in its dtype)."""
    parts = {p.key: read(p) for p in stored.parts}
    if stored.quant == "8bit":
        scb = next(v for k, v in parts.items() if k.endswith(".SCB"))
        q = parts[stored.key]
        return (q.to(torch.float32) * (scb.to(torch.float32).view(-1, 1) / 127.0)).to(stored.dtype)
    packed = parts.pop(stored.key)
    tensors = {k[len(stored.key) + 1:]: v for k, v in parts.items()}
    qs_key = next(k for k in tensors if k.startswith("quant_state."))
    qs = _qs_json(tensors.pop(qs_key), f"{stored.key}.{qs_key}")
    try:  # in plain torch (io/fourbit.py): blocks of the flattened weight, as bitsandbytes stores them
        return dequantize_stored(packed, tensors, qs).to(stored.dtype)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise InvalidAdapterError(f"{stored.key}: its 4-bit quant state cannot be read ({err})",
                                  hint="The checkpoint is incomplete or from an unknown "
                                  "bitsandbytes format.") from err
