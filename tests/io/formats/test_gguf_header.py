"""io/formats/gguf_header.py: a GGUF header read without the ``gguf`` package, checked against
files the ``gguf`` package writes; broken files are invalid adapters, never tracebacks."""

from __future__ import annotations

import numpy as np
import pytest

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.formats.gguf_header import is_gguf_file, read_gguf_header


def write_gguf(path, n_items: int = 3):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(n_items)])
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((8, 64), np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.ones((64, 8), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_metadata_and_tensor_table_as_the_gguf_package_wrote_them(tmp_path):
    path = write_gguf(tmp_path / "a.gguf")
    assert is_gguf_file(path) and not is_gguf_file(tmp_path)
    h = read_gguf_header(path)
    assert h.version == 3 and h.get("general.type") == "adapter" and h.get("adapter.lora.alpha") == 16.0
    assert h.get("general.architecture") == "llama" and h.get("missing", 7) == 7
    a, b = h.tensors["blk.0.attn_q.weight.lora_a"], h.tensors["blk.0.attn_q.weight.lora_b"]
    assert (a.shape, a.ggml_type, a.nbytes) == ((8, 64), "F32", 8 * 64 * 4)
    assert (b.shape, b.ggml_type, b.nbytes) == ((64, 8), "F16", 64 * 8 * 2)
    assert h.data_offset % 32 == 0


def test_a_truncated_file_is_an_invalid_adapter(tmp_path):
    data = write_gguf(tmp_path / "a.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidAdapterError, match="not a valid GGUF file: tensor .* ends after the end"):
        read_gguf_header(cut)


def test_not_gguf_at_all(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(60))
    with pytest.raises(InvalidAdapterError, match="the magic bytes are not 'GGUF'"):
        read_gguf_header(tmp_path / "x.gguf")
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    with pytest.raises(InvalidAdapterError, match=r"not a GGUF file \(4 bytes\)"):
        read_gguf_header(tmp_path / "tiny.gguf")
    with pytest.raises(NotFoundError):
        read_gguf_header(tmp_path / "none.gguf")
