"""io/checkpoint/reader.py by key (what convert --base / --extract use) and io/checkpoint/adapter_writer.py's
tensor preparation (copies only what safetensors refuses)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from adapterctl.errors import IncompatibleBaseError
from adapterctl.io.checkpoint.adapter_writer import _saveable, write_adapter_files
from adapterctl.io.checkpoint.reader import CheckpointReader
from adapterctl.io.folders.model_dir import locate_model_files


def save_as_bin(model_dir, out):
    """A copy of a safetensors model folder as two legacy pytorch_model-*.bin shards."""
    import json

    out.mkdir()
    shutil.copy(model_dir / "config.json", out / "config.json")
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2],
              "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, ks in halves.items():
        torch.save({k: state[k] for k in ks}, out / name)
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    return out


def test_bin_and_safetensors_read_the_same_tensors_by_key(tiny_models, tmp_path):
    st = tiny_models["gpt2"]
    binary = save_as_bin(st, tmp_path / "bin")
    with CheckpointReader(locate_model_files(st)) as a, \
            CheckpointReader(locate_model_files(binary)) as b:
        assert a.names == b.names and a.names
        for name in a.names:
            assert a.shape(name) == b.shape(name)
            assert torch.equal(a.load(name), b.load(name)), name
        # runtime path -> checkpoint key (GPT-2 files drop the "transformer." prefix)
        key = a.resolve("transformer.h.0.attn.c_attn.weight")
        assert key in a.names and torch.equal(a.load_param("transformer.h.0.attn.c_attn.weight"),
                                              b.load(key))
        with pytest.raises(IncompatibleBaseError, match="has no parameter transformer.h.9.x.weight"):
            a.load_param("transformer.h.9.x.weight", "the adapter")


def test_writer_copies_only_shared_or_strided_tensors(tmp_path):
    plain, shared = torch.randn(4, 6), torch.randn(3, 5)
    tensors = {"a": plain, "b": shared, "c": shared, "d": shared.T, "e": shared[1:]}
    out = _saveable(tensors)
    # no copy (memory is not doubled): the same storage goes to safetensors
    assert out["a"].data_ptr() == plain.data_ptr() and out["b"].data_ptr() == shared.data_ptr()
    assert out["c"].data_ptr() != shared.data_ptr() and out["d"].is_contiguous()
    assert out["e"].untyped_storage().data_ptr() != shared.untyped_storage().data_ptr()
    write_adapter_files(tmp_path, {"r": 2}, tensors, "card")
    back = load_file(str(tmp_path / "adapter_model.safetensors"))
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
