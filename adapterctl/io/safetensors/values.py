"""Read tensor values from a safetensors file with numpy (no torch), for ``inspect --check-values``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapterctl.io.dtypes import TABLE
from adapterctl.io.safetensors.header import SafetensorsHeader

if TYPE_CHECKING:  # numpy loads with the first read
    import numpy as np

_NUMPY_DTYPES = {d.st: d.numpy for d in TABLE if d.numpy}


def read_tensor_f32(header: SafetensorsHeader, name: str) -> np.ndarray | None:
    """The tensor as a float32 numpy array (bf16 widened bit-exactly), memory-mapped where possible."""
    import numpy as np

    info = header.tensors[name]
    offset = 8 + header.header_size + info.data_offsets[0]
    count = info.numel
    if info.dtype == "BF16":
        raw = np.fromfile(header.path, dtype="<u2", count=count, offset=offset)
        arr = (raw.astype(np.uint32) << 16).view(np.float32)
    elif info.dtype in _NUMPY_DTYPES:
        arr = np.fromfile(header.path, dtype=_NUMPY_DTYPES[info.dtype], count=count, offset=offset)
        arr = arr.astype(np.float32)
    else:
        return None
    return arr.reshape(info.shape)
