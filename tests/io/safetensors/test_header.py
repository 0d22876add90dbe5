import json
import struct

import pytest

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.safetensors.header import read_safetensors_header


def _write(path, header: dict, data: bytes = b"", raw_len: int | None = None):
    blob = json.dumps(header).encode()
    n = len(blob) if raw_len is None else raw_len
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def test_reads_valid_header_like_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(p),
              metadata={"format": "pt"})
    h = read_safetensors_header(p)
    assert h.tensors["a"].shape == (2, 3) and h.tensors["a"].dtype == "F32"
    assert h.tensors["b"].nbytes == 8 and h.metadata == {"format": "pt"}


@pytest.mark.parametrize("case,msg", [
    ("short", "too short"),
    ("len_past_end", "header claims"),
    ("not_json", "not JSON"),
    ("not_object", "not a JSON object"),
    ("bad_dtype", "unknown dtype"),
    ("offsets_past_end", "ends at byte"),
    ("size_mismatch", "needs 24 bytes"),
    ("overlap", "overlap"),
    ("bad_shape", "invalid shape"),
])
def test_rejects_broken_headers(tmp_path, case, msg):
    p = tmp_path / "x.safetensors"
    if case == "short":
        p.write_bytes(b"\x01\x02")
    elif case == "len_past_end":
        _write(p, {}, raw_len=10**9)
    elif case == "not_json":
        blob = b"{not json"
        p.write_bytes(struct.pack("<Q", len(blob)) + blob)
    elif case == "not_object":
        _write(p, [1, 2])  # type: ignore[arg-type]
    elif case == "bad_dtype":
        _write(p, {"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "offsets_past_end":
        _write(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4)
    elif case == "size_mismatch":
        _write(p, {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 8]}}, b"\0" * 8)
    elif case == "overlap":
        _write(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "bad_shape":
        _write(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(InvalidAdapterError, match=msg) as info:
        read_safetensors_header(p)
    assert "x.safetensors" in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError):
        read_safetensors_header(tmp_path / "nope.safetensors")
