"""io/checkpoint.py by key (what convert --base / --extract use)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from adapterctl.errors import IncompatibleBaseError
from adapterctl.io.checkpoint import CheckpointReader
from adapterctl.io.model_dir import locate_model_files


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

