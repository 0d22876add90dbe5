"""Write a sharded safetensors checkpoint tensor by tensor, with memory bounded by one tensor.

The shard layout is planned up front from each tensor's name, dtype and shape (known before any
value is computed), so every shard's header is written first, the file's blocks are reserved, and
each tensor's bytes go straight to their final offset: nothing is buffered, tensors may arrive in
any order (from several threads), and the writer knows nothing of what the tensors mean. A tensor
is written three ways: ``rows`` takes blocks of rows as they are computed (no full-size output
tensor), ``copy_from`` copies a byte range of another file in the kernel (io/safetensors/file_pages.py),
``write`` writes a finished tensor. File names and the index follow transformers
(``model-00001-of-00003.safetensors``, ``model.safetensors.index.json`` with ``total_size``).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.checkpoint.stored import ST_TO_TORCH
from adapterctl.io.folders.output_dir import io_error
from adapterctl.io.safetensors.file_pages import copy_range, reserve, start_writeback

#: torch dtype -> safetensors dtype name (the inverse of the one dtype table's view)
ST_DTYPES: dict[torch.dtype, str] = {t: st for st, t in ST_TO_TORCH.items()}
#: transformers' spelling of --max-shard-size: decimal units, like "5GB" or "500MB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as transformers); '512MiB' binary; plain ints are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class ShardPlan:
    filename: str
    tensors: list[TensorSpec] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(specs: list[TensorSpec], max_shard_size: int) -> list[ShardPlan]:
    """Greedy in the given order, as transformers: a new shard when the next tensor would overflow
    (a tensor larger than the limit gets a shard of its own)."""
    shards: list[ShardPlan] = []
    current, size = ShardPlan(""), 0
    for spec in specs:
        if current.tensors and size + spec.nbytes > max_shard_size:
            shards.append(current)
            current, size = ShardPlan(""), 0
        current.tensors.append(spec)
        size += spec.nbytes
    if current.tensors or not shards:
        shards.append(current)
    n = len(shards)
    for i, shard in enumerate(shards):
        shard.filename = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    return shards


def _header_bytes(shard: ShardPlan, metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    header: dict = {"__metadata__": metadata} if metadata else {}
    offsets, pos = {}, 0
    for t in shard.tensors:
        if t.dtype not in ST_DTYPES:
            raise InvalidAdapterError(f"{t.name}: dtype {t.dtype} cannot be stored in safetensors")
        header[t.name] = {
            "dtype": ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [pos, pos + t.nbytes],
        }
        offsets[t.name] = pos
        pos += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned, as safetensors does
    return len(raw).to_bytes(8, "little") + raw, offsets


class ShardWriter:
    """Writes the planned shards into ``folder``; ``write(name, tensor)`` for every planned tensor,
    then ``finish()`` checks completeness and writes the index (sharded output only)."""

    def __init__(self, folder: Path, shards: list[ShardPlan], metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.shards = shards
        self._where: dict[str, tuple[int, int, TensorSpec]] = {}  # name -> (fd, offset, spec)
        self._fds: list[int] = []
        self._pending: set[str] = set()
        self._lock = threading.Lock()  # the pending set, when tensors arrive from several threads
        self._local = threading.local()  # each thread's staging buffer for rows()
        meta = {"format": "pt", **(metadata or {})}
        try:
            for shard in shards:
                path = self.folder / shard.filename
                fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                head, offsets = _header_bytes(shard, meta)
                _pwrite_all(fd, head, 0, path)
                reserve(fd, len(head) + shard.nbytes)
                for t in shard.tensors:
                    self._where[t.name] = (fd, len(head) + offsets[t.name], t)
                    self._pending.add(t.name)
        except OSError as err:
            self.close()
            raise io_error(self.folder, err) from err

    def spec(self, name: str) -> TensorSpec:
        return self._where[name][2]

    def rows(self, name: str) -> RowWriter:
        """A planned 2-D-or-more tensor written block of rows by block of rows as it is computed:
        ``rows[r0:r1] = block`` rounds the block to the planned dtype in a small reused buffer
        (still in cache) and writes it at its place; then :meth:`wrote`. Measured here: 4 ms
        per 23 MB tensor on top of the maths, against 13 ms for storing into a writable map of
        the file (each new page of a map is zeroed, then faulted in)."""
        return RowWriter(self, name)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Write one tensor's bytes at its planned offset; returns the bytes written."""
        fd, offset, spec = self._where[name]
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(
                f"{name}: planned {spec.dtype} {list(spec.shape)}, got {tensor.dtype} {list(tensor.shape)}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        # an ndarray is a buffer; numpy's stubs say so (__buffer__) only for Python >= 3.12
        _pwrite_all(fd, memoryview(data), offset, self.folder / name)  # pyright: ignore[reportArgumentType]
        return self.wrote(name)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> bool:
        """Copy the planned tensor's bytes from another file (same dtype and shape, at
        ``src_offset``) inside the kernel; False when the source ends before them."""
        fd, offset, spec = self._where[name]
        try:
            got = copy_range(src_fd, src_offset, fd, offset, spec.nbytes)
        except OSError as err:
            raise io_error(self.folder / name, err) from err
        if got != spec.nbytes:
            return False
        self.wrote(name)
        return True

    def wrote(self, name: str) -> int:
        """Mark a tensor complete (after its :meth:`rows`); returns its size in bytes."""
        with self._lock:
            self._pending.discard(name)
        return self._where[name][2].nbytes

    def start_writeback(self, name: str) -> None:
        """Start writing a finished tensor's pages to disk now, so the disk works while the next
        tensors are computed and the fsync at the end has little left (a hint; may block while
        the disk's queue is full, so call it where waiting costs nothing)."""
        fd, offset, spec = self._where[name]
        start_writeback(fd, offset, spec.nbytes)

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """This thread's reused staging buffer, as a tensor of ``shape`` and ``dtype``."""
        need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < need:
            buf = self._local.buf = torch.empty(need, dtype=torch.uint8)
        return buf[:need].view(dtype).view(shape)

    def finish(self) -> dict:
        """Close the shards and write ``model.safetensors.index.json`` when there are several."""
        if self._pending:
            raise RuntimeError(f"tensors planned but never written: {sorted(self._pending)[:5]}")
        for fd in self._fds:
            try:
                os.fsync(fd)
            except OSError as err:
                raise io_error(self.folder, err) from err
        self.close()
        total = sum(s.nbytes for s in self.shards)
        index = {
            "metadata": {"total_size": total},
            "weight_map": {t.name: s.filename for s in self.shards for t in s.tensors},
        }
        if len(self.shards) > 1:
            path = self.folder / "model.safetensors.index.json"
            try:
                path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            except OSError as err:
                raise io_error(path, err) from err
        return index

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RowWriter:
    """Blocks of rows of one planned tensor, written at their offsets as they come (see
    :meth:`ShardWriter.rows`); any order, each row once."""

    def __init__(self, writer: ShardWriter, name: str):
        self.writer, self.name = writer, name
        self.fd, self.offset, self.spec = writer._where[name]
        self.shape = self.spec.shape
        self.row_bytes = self.spec.nbytes // self.shape[0] if self.shape and self.shape[0] else 0

    def __setitem__(self, rows: slice, block: torch.Tensor) -> None:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1 or tuple(block.shape) != (stop - start, *self.shape[1:]):
            raise ValueError(
                f"{self.name}: rows {start}:{stop}:{step} of {list(self.shape)}, "
                f"got a block of {list(block.shape)}"
            )
        buf = self.writer._buffer(tuple(block.shape), self.spec.dtype)
        buf.copy_(block)  # the rounding to the output dtype, as assigning into a tensor does
        _pwrite_all(
            self.fd,
            buf.reshape(-1).view(torch.uint8).numpy(),
            self.offset + start * self.row_bytes,
            self.writer.folder / self.name,
        )


def _pwrite_all(fd: int, data, offset: int, path: Path) -> None:
    view = memoryview(data).cast("B")
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as err:
        raise io_error(path, err) from err
