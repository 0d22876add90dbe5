"""Read a base checkpoint tensor by tensor: safetensors with positioned reads at the offsets of
its (validated) header, legacy ``.bin`` shards through ``torch.load(weights_only=True, mmap=True)``.

Why not ``safe_open``'s mmap: pages of a mapping stay resident (and count in RSS) until the whole
file is unmapped, so a 5 GB shard costs 5 GB of RSS; a positioned read into a buffer we drop after
use keeps memory at one tensor whatever the shard size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.model_dir import ModelFiles
from adapterctl.io.safetensors_header import read_safetensors_header

ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


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


def list_tensors(files: ModelFiles) -> list[StoredTensor]:
    """Every tensor of the checkpoint, in file order then storage order (sequential reads)."""
    out: list[StoredTensor] = []
    for f in files.weight_files:
        if files.weights_format == "safetensors":
            header = read_safetensors_header(f)
            items = sorted(header.tensors.items(), key=lambda kv: kv[1].data_offsets[0])
            for name, info in items:
                if info.dtype not in ST_TO_TORCH:
                    raise InvalidAdapterError(f"{f}: {name} has dtype {info.dtype}, which adapterctl "
                                              "cannot read", hint="Convert the checkpoint first.")
                start = 8 + header.header_size + info.data_offsets[0]
                out.append(StoredTensor(name, ST_TO_TORCH[info.dtype], tuple(info.shape), f,
                                        start, info.nbytes))
        else:
            for name, t in _load_bin(f).items():
                out.append(StoredTensor(name, t.dtype, tuple(t.shape), f))
    return out


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and torch errors: the file is not a safe tensor dict
        raise InvalidAdapterError(
            f"{path}: cannot be loaded safely ({type(err).__name__}: {err})"[:400],
            hint="Only plain tensor dicts are read from .bin files (weights_only=True); re-save "
            "the model with safetensors in a trusted environment.") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidAdapterError(f"{path}: is not a dict of tensors")
    return state


def _pread_into(fd: int, buf: bytearray, offset: int) -> int:
    """Fill ``buf`` from ``offset`` (one call reads at most ~2 GB on Linux); returns bytes read."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


class CheckpointReader:
    """``get(stored)`` returns one tensor; keeps only the current file open (mmap)."""

    def __init__(self, files: ModelFiles):
        self.files = files
        self._path: Path | None = None
        self._handle = None

    def _open(self, path: Path):
        if self._path != path:
            self.close()
            if self.files.weights_format == "safetensors":
                try:
                    self._handle = open(path, "rb", buffering=0)
                except OSError as err:
                    raise InvalidAdapterError(f"{path}: cannot open: {err.strerror}") from err
            else:
                self._handle = _load_bin(path)
            self._path = path
        return self._handle

    def get(self, stored: StoredTensor) -> torch.Tensor:
        if stored.quant is not None:
            from adapterctl.io.quantized import dequantize

            return dequantize(stored, self.get)
        handle = self._open(stored.file)
        if isinstance(handle, dict):
            return handle[stored.key]
        buf = bytearray(stored.nbytes)
        try:
            got = _pread_into(handle.fileno(), buf, stored.offset)
        except OSError as err:
            raise InvalidAdapterError(f"{stored.file}: cannot read {stored.key}: {err.strerror}") from err
        if got != stored.nbytes:
            raise InvalidAdapterError(f"{stored.file}: truncated: {stored.key} needs bytes up to "
                                      f"{stored.offset + stored.nbytes}, the file ends before",
                                      hint="The shard is corrupt or incomplete; download it again.")
        if not stored.nbytes:
            return torch.empty(stored.shape, dtype=stored.dtype)
        return torch.frombuffer(buf, dtype=stored.dtype).reshape(stored.shape)

    def iter(self, stored: list[StoredTensor]) -> Iterator[tuple[StoredTensor, torch.Tensor]]:
        for s in stored:
            yield s, self.get(s)

    def close(self) -> None:
        if self._handle is not None and not isinstance(self._handle, dict):
            self._handle.close()
        self._handle, self._path = None, None

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
