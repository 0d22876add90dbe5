"""What a checkpoint tensor is and where it lives, without its values: the record every
checkpoint reader (:mod:`checkpoint`, :mod:`quantized`) passes around, and the dtype table
(:mod:`adapterctl.io.dtypes`) as torch dtypes."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


class Grouping:
    """A quantized checkpoint's tensors being grouped into the tensors the model sees: each format's
    grouping (bitsandbytes, FP8, MXFP4, compressed-tensors, GPTQ, AWQ) finds its quantized weights
    and side tensors, records each as one :meth:`logical_weight`, and returns :meth:`tensors`. The
    one assembly of every format's grouping."""

    def __init__(self, stored: list[StoredTensor]) -> None:
        self.stored = stored
        self.by_key = {s.key: s for s in stored}
        self._logical: dict[str, StoredTensor] = {}
        self._consumed: set[str] = set()

    def logical_weight(
        self,
        at: StoredTensor,
        parts: tuple[StoredTensor, ...],
        *,
        quant: str,
        dtype: torch.dtype,
        key: str | None = None,
        shape: tuple[int, ...] | None = None,
        scheme: tuple = (),
    ) -> None:
        """One logical (dequantized on read) tensor in the place of ``at``, made of ``parts``
        (which no longer stand alone); ``key`` and ``shape`` default to ``at``'s."""
        self._logical[at.key] = replace(
            at,
            key=at.key if key is None else key,
            dtype=dtype,
            shape=at.shape if shape is None else shape,
            quant=quant,
            parts=tuple(parts),
            scheme=scheme,
        )
        self._consumed.update(p.key for p in parts)

    def drop(self, key: str) -> None:
        """A stored tensor the model does not see (an activation scale, a format's metadata)."""
        self._consumed.add(key)

    def grouped(self, key: str) -> bool:
        """Whether the stored tensor ``key`` stands for a logical tensor already."""
        return key in self._logical

    def tensors(self) -> list[StoredTensor]:
        """The tensors as the model sees them, in storage order: each logical tensor where the
        stored tensor it is keyed by was, the side tensors its parts hold (scales, quant states,
        packs) and the dropped ones left out."""
        logical, consumed = self._logical, self._consumed
        return [logical.get(s.key, s) for s in self.stored if s.key in logical or s.key not in consumed]
