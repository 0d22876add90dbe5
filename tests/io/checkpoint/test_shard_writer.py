"""io/checkpoint/shard_writer.py: planned shards written tensor by tensor read back identically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adapterctl.io.checkpoint.shard_writer import ShardWriter, TensorSpec, parse_size, plan_shards


def _tensors():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(40, 30), "b.weight": torch.randn(7).to(torch.bfloat16),
            "c.ids": torch.arange(12, dtype=torch.int64).view(3, 4), "d.flag": torch.tensor([True]),
            "e.empty": torch.zeros(0, 5)}


@pytest.mark.parametrize("limit", [10**9, 1000])
def test_round_trip_any_write_order(tmp_path, limit):
    tensors = _tensors()
    shards = plan_shards([TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], limit)
    writer = ShardWriter(tmp_path, shards)
    for k in reversed(list(tensors)):  # positioned writes: order does not matter
        writer.write(k, tensors[k])
    index = writer.finish()
    back = {}
    for s in shards:
        back.update(load_file(str(tmp_path / s.filename)))
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in tensors.values())
    if len(shards) > 1:
        on_disk = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert on_disk["weight_map"] == index["weight_map"]
        assert shards[0].filename == f"model-00001-of-{len(shards):05d}.safetensors"
    else:
        assert shards[0].filename == "model.safetensors"


def test_missing_or_mismatched_tensor_is_an_error(tmp_path):
    shards = plan_shards([TensorSpec("x", torch.float32, (2, 2))], 10**9)
    writer = ShardWriter(tmp_path, shards)
    with pytest.raises(ValueError, match="planned"):
        writer.write("x", torch.zeros(3))
    with pytest.raises(RuntimeError, match="never written"):
        writer.finish()
    writer.close()


def test_oversized_tensor_gets_its_own_shard():
    specs = [TensorSpec("small", torch.float32, (10,)), TensorSpec("big", torch.float32, (1000,)),
             TensorSpec("small2", torch.float32, (10,))]
    assert [len(s.tensors) for s in plan_shards(specs, 100)] == [1, 1, 1]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("lots")
