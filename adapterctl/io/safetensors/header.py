"""Read a safetensors header without loading a tensor (and without torch).

Format: 8 bytes little-endian u64 ``n``, then ``n`` bytes of JSON mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header),
plus an optional ``"__metadata__"`` string map. Everything is validated here, so a file that passes
cannot make a later reader allocate more than the file holds.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.dtypes import TABLE

#: Bytes per element for every dtype the safetensors format defines (from the one dtype table).
DTYPE_SIZES: dict[str, float] = {d.st: d.size for d in TABLE}
#: safetensors itself refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_size: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _bad(path: str, what: str) -> InvalidAdapterError:
    return InvalidAdapterError(
        f"{path}: not a valid safetensors file: {what}",
        hint="The file is truncated or corrupt; download or save it again.",
    )


def parse_header_bytes(raw: bytes, path: str, data_size: int) -> SafetensorsHeader:
    """Validate the JSON header ``raw`` of a file whose data section holds ``data_size`` bytes."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _bad(path, f"the header is not JSON ({err.__class__.__name__})") from err
    if not isinstance(doc, dict):
        raise _bad(path, "the header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _parse_entry(path, name, entry, data_size)
    _check_no_overlap(path, tensors)
    return SafetensorsHeader(path, tensors, dict(metadata), len(raw))


def _parse_entry(path: str, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(path, f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:  # a list/dict is unhashable
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}"[:300])
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**53 for d in shape
    ):
        raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    if offsets[1] > data_size:
        raise _bad(
            path,
            f"tensor {name!r} ends at byte {offsets[1]} but the file holds only {data_size} data bytes",
        )
    # in bits, with Python ints: a shape of many huge dims must not overflow a float
    expected_bits = math.prod(shape) * round(DTYPE_SIZES[dtype] * 8)
    if expected_bits != 8 * (offsets[1] - offsets[0]):
        needs = f"{expected_bits / 8:g}" if expected_bits < 2**1000 else "more than 2**1000"
        raise _bad(
            path,
            f"tensor {name!r}: shape {str(shape)[:100]} of {dtype} needs {needs} "
            f"bytes, the offsets give {offsets[1] - offsets[0]}",
        )
    return TensorInfo(dtype, tuple(shape), (offsets[0], offsets[1]))


def _check_no_overlap(path: str, tensors: dict[str, TensorInfo]) -> None:
    spans = sorted((t.data_offsets, n) for n, t in tensors.items() if t.nbytes)
    for (prev, prev_name), (cur, cur_name) in zip(spans, spans[1:]):
        if cur[0] < prev[1]:
            raise _bad(path, f"tensors {prev_name!r} and {cur_name!r} overlap")


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a local safetensors file (reads only the header bytes)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _bad(str(p), f"the file is {size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _bad(
                    str(p),
                    f"the header claims {n} bytes but the file has only {size - 8} after the length",
                )
            raw = fh.read(n)
    except FileNotFoundError as err:
        raise NotFoundError(f"{p}: no such file") from err
    except IsADirectoryError as err:
        raise InvalidAdapterError(f"{p}: is a directory, expected a safetensors file") from err
    except PermissionError as err:
        raise InvalidAdapterError(f"{p}: permission denied") from err
    return parse_header_bytes(raw, str(p), size - 8 - n)
