"""Read a GGUF file's header (metadata and tensor table) without the ``gguf`` package, numpy or torch.

GGUF (llama.cpp's format, ggml/docs/gguf.md): magic ``GGUF``, u32 version (2 or 3), u64 tensor
count, u64 metadata count, the metadata key/values, one info record per tensor (name, dims in
ggml order: ``ne[0]`` is the fastest-varying one, so numpy's shape is the reverse; ggml type; data
offset), then the tensor data at the next ``general.alignment`` boundary (default 32). Everything
is little-endian. This reader is what ``inspect`` uses, so it is stdlib only and validates every
count and length against the file size before trusting it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError

MAGIC = b"GGUF"
#: ggml type id -> (name, elements per block, bytes per block), for the types adapters use.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this (tokenizer vocabularies of base models) are summarised, not kept.
MAX_KEPT_ARRAY = 4096


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (ggml's ne reversed)
    ggml_type: str
    offset: int  # relative to the start of the data section
    nbytes: int | None  # None for a ggml type this reader does not know


@dataclass(frozen=True)
class GGUFArraySummary:
    """A long metadata array, described rather than kept (``inspect`` never needs its items)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, object]
    tensors: dict[str, GGUFTensorInfo] = field(default_factory=dict)
    data_offset: int = 0

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)


def is_gguf_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return p.is_file() and f.read(4) == MAGIC
    except OSError:
        return False


class _Reader:
    def __init__(self, data: memoryview | bytes, path: str, size: int) -> None:
        self.f, self.path, self.size, self.pos = data, path, size, 0

    def bad(self, what: str) -> InvalidAdapterError:
        return InvalidAdapterError(
            f"{self.path}: not a valid GGUF file: {what}",
            hint="The file is truncated or corrupt; convert or download it again.",
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.bad(f"needs {n} bytes at offset {self.pos}, the file has {self.size}")
        out = bytes(self.f[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.bad(f"a string at offset {self.pos - n} is not UTF-8") from err

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item == _ARRAY:
                raise self.bad("nested arrays are not supported")
            if item in _SCALARS and count * struct.calcsize(_SCALARS[item]) > self.size - self.pos:
                raise self.bad(f"an array of {count} items is longer than the file")
            if count > MAX_KEPT_ARRAY:
                if item in _SCALARS:
                    self.take(count * struct.calcsize(_SCALARS[item]))
                else:
                    for _ in range(count):
                        self.value(item)
                return GGUFArraySummary(item, count)
            return [self.value(item) for _ in range(count)]
        raise self.bad(f"unknown metadata value type {vtype}")


def _tensor_info(r: _Reader) -> GGUFTensorInfo:
    name = r.string()
    n_dims = r.unpack("<I")
    if n_dims > 8:
        raise r.bad(f"tensor {name!r} has {n_dims} dimensions")
    ne = [r.unpack("<Q") for _ in range(n_dims)]
    type_id, offset = r.unpack("<I"), r.unpack("<Q")
    known = GGML_TYPES.get(type_id)
    numel = 1
    for d in ne:
        numel *= d
    nbytes = None
    if known:
        name_t, block, block_bytes = known
        if ne and ne[0] % block:
            raise r.bad(f"tensor {name!r}: row length {ne[0]} is not a multiple of {block} ({name_t} blocks)")
        nbytes = numel // block * block_bytes
    return GGUFTensorInfo(name, tuple(reversed(ne)), known[0] if known else f"type{type_id}", offset, nbytes)


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse the metadata and tensor table of ``path``; validate offsets against the file size."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{path}: no such file", hint="Give the path of a .gguf file.")
    size = p.stat().st_size
    import mmap

    with p.open("rb") as fh:
        if size < 24:
            raise InvalidAdapterError(f"{path}: not a GGUF file ({size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _parse(_Reader(view, str(path), size))
            finally:
                view.release()  # before the mmap closes


def _parse(r: _Reader) -> GGUFHeader:
    if r.take(4) != MAGIC:
        raise r.bad("the magic bytes are not 'GGUF'")
    version = r.unpack("<I")
    if version not in (2, 3):
        raise r.bad(f"version {version} (supported: 2 and 3)")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    if n_tensors > r.size // 24 or n_kv > r.size // 12:
        raise r.bad(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit in the file")
    metadata = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.unpack("<I"))
    tensors = {}
    for _ in range(n_tensors):
        info = _tensor_info(r)
        tensors[info.name] = info
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise r.bad(f"general.alignment is {align!r}, not a power of two")
    data_offset = -(-r.pos // align) * align
    for t in tensors.values():
        if t.nbytes is not None and data_offset + t.offset + t.nbytes > r.size:
            raise r.bad(f"tensor {t.name!r} ends after the end of the file")
    return GGUFHeader(r.path, version, metadata, tensors, data_offset)
