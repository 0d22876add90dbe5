"""What a checkpoint tensor is and where it lives, without its values: the record every
checkpoint reader (:mod:`checkpoint`, :mod:`quantized`) passes around, and the dtype table
(:mod:`adapterctl.io.dtypes`) as torch dtypes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adapterctl.io.dtypes import TABLE, WRITABLE, check_dtype


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` value (``"bfloat16"`` -> ``torch.bfloat16``); a name
    adapterctl does not write is a usage error naming the choices."""
    return getattr(torch, check_dtype(name, auto=False))


def dtype_name(dtype: torch.dtype) -> str:
    """The table's (torch's) name of a torch dtype: ``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


#: safetensors dtype name -> torch dtype, for every dtype the checkpoint readers accept
ST_TO_TORCH: dict[str, torch.dtype] = {
    d.st: getattr(torch, d.torch) for d in TABLE if d.torch and hasattr(torch, d.torch)
}
#: the floating dtypes a base checkpoint is stored in and merge writes
FLOAT_DTYPES = tuple(torch_dtype(name) for name in WRITABLE)


@dataclass(frozen=True)
class StoredTensor:
    """Where a checkpoint tensor lives, and what it is, without its values."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    offset: int = -1  # absolute byte offset in a safetensors file
    nbytes: int = 0
    #: "4bit" | "8bit" (bitsandbytes), "fp8", "mxfp4", "compressed", "gptq", "awq": dequantized on read
    quant: str | None = None
    parts: tuple[StoredTensor, ...] = ()  # its stored tensors (io/checkpoint/quantized.py)
    scheme: tuple = ()  # (name, value) pairs the format's dequantization needs


def regrouped(
    stored: list[StoredTensor], logical: dict[str, StoredTensor], consumed: set[str]
) -> list[StoredTensor]:
    """A quantized checkpoint's tensors as the model sees them, in storage order: each logical
    (dequantized) tensor where the stored tensor it is keyed by was, the side tensors it
    ``consumed`` (scales, quant states, packs) dropped. The one assembly of every format's
    grouping (bitsandbytes, FP8, MXFP4, compressed-tensors)."""
    return [logical.get(s.key, s) for s in stored if s.key in logical or s.key not in consumed]
