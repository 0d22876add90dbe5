"""io/safetensors/values.py: tensor values with numpy, as float32 (bf16 widened by its bits),
None for a dtype numpy cannot read (bool, fp8, unsigned 16+ bits)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from adapterctl.io.safetensors.header import read_safetensors_header
from adapterctl.io.safetensors.values import read_tensor_f32


def test_float_tensors_come_back_as_float32_in_their_shape(tmp_path):
    a = np.arange(6, dtype=np.float16).reshape(2, 3) / 4
    b = np.linspace(-1, 1, 8, dtype=np.float64).reshape(2, 2, 2)
    flags = np.array([True, False])
    save_file({"a": a, "b": b, "i": np.arange(3, dtype=np.int64), "m": flags}, tmp_path / "t.safetensors")
    header = read_safetensors_header(tmp_path / "t.safetensors")
    got = read_tensor_f32(header, "a")
    assert got.dtype == np.float32 and got.shape == (2, 3) and np.array_equal(got, a.astype(np.float32))
    assert np.array_equal(read_tensor_f32(header, "b"), b.astype(np.float32))
    assert read_tensor_f32(header, "i").tolist() == [0.0, 1.0, 2.0]
    assert read_tensor_f32(header, "m") is None


def test_bf16_is_widened_bit_exactly(tmp_path):
    """bf16 is the upper half of a float32: the bytes written by hand, read back exactly."""
    values = np.array([1.5, -2.25, 3.0e38, 2.0**-130], dtype=np.float32)
    halves = (values.view(np.uint32) >> 16).astype("<u2")
    data = halves.tobytes()
    head = b'{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,%d]}}' % len(data)
    head += b" " * (-len(head) % 8)
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(head).to_bytes(8, "little") + head + data)
    got = read_tensor_f32(read_safetensors_header(path), "w")
    assert np.array_equal(got.ravel(), (halves.astype(np.uint32) << 16).view(np.float32))
    assert got[0, 0] == 1.5 and got[0, 1] == -2.25
