"""What a checkpoint tensor is and where it lives, without its values: the record every
checkpoint reader (:mod:`checkpoint`, :mod:`quantized`) passes around, and the safetensors dtype
names as torch dtypes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class StoredTensor:
    """Where a checkpoint tensor lives, and what it is, without its values."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    offset: int = -1  # absolute byte offset in a safetensors file
    nbytes: int = 0
    quant: str | None = None  # "4bit" | "8bit": a bitsandbytes weight, dequantized on read
    parts: tuple["StoredTensor", ...] = ()  # its stored tensors (io/quantized.py)
