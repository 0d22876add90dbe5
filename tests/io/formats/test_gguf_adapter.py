"""io/formats/gguf_adapter.py: reading llama.cpp LoRA adapters refuses malformed metadata."""

from __future__ import annotations

import numpy as np
import pytest

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.formats.gguf_adapter import import_gguf, read_gguf_adapter


def _write(path, alpha) -> None:
    gguf = import_gguf()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    if isinstance(alpha, str):
        w.add_string("adapter.lora.alpha", alpha)
    else:
        w.add_float32("adapter.lora.alpha", alpha)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 16), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.ones((16, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reads_alpha_and_tensors(tmp_path):
    _write(tmp_path / "a.gguf", 8.0)
    got = read_gguf_adapter(tmp_path / "a.gguf")
    assert got.alpha == 8.0 and got.tensors["blk.0.attn_q.weight.lora_a"].shape == (4, 16)


def test_a_non_numeric_alpha_is_invalid_naming_the_key(tmp_path):
    """Was a ValueError from float() (exit 1, "a bug"); now exit 4 naming the key."""
    _write(tmp_path / "a.gguf", "eight")
    with pytest.raises(InvalidAdapterError, match="adapter.lora.alpha must be a number, got 'eight'") as err:
        read_gguf_adapter(tmp_path / "a.gguf")
    assert err.value.exit_code == 4
