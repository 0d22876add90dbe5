"""core/merge/write.py's fast paths write exactly the bytes of the reference path.

Fast: untouched tensors copied file to file in the kernel, base tensors read through maps, plain
LoRA rows written as they are computed, two tensors in flight. Reference: every tensor read into a
fresh buffer, merged as a whole by ``merge_tensor`` and written by ``ShardWriter.write``, one at a
time (the merge as it was before the fast paths). The outputs must be byte-identical files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from adapterctl.core.merge import write
from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.io.checkpoint import reader as checkpoint
from adapterctl.io.folders.model_dir import locate_model_files
from adapterctl.io.checkpoint.shard_writer import ShardWriter, TensorSpec, plan_shards


def _merge(base, adapter, out, **options) -> dict[str, bytes]:
    job = plan_merge(base, load_adapters([adapter]), MergeOptions(**options))
    write.execute_merge(job, out, device="cpu")
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.name.endswith((".safetensors", ".json"))}


def _reference(monkeypatch, base, adapter, out, **options) -> dict[str, bytes]:
    with monkeypatch.context() as m:
        m.setattr(write, "WORKERS", 1)
        m.setattr(write, "copies_as_stored", lambda task, job: False)
        m.setattr(ShardWriter, "rows", lambda self, name: None)
        m.setattr(checkpoint, "MAP_READS", False)
        return _merge(base, adapter, out, **options)


def _count_fast(monkeypatch) -> dict[str, int]:
    """Counts of kernel copies and row-written tensors (so the fast run is known to use them)."""
    calls = {"copy_from": 0, "rows": 0}
    for name in calls:
        original = getattr(ShardWriter, name)

        def counted(self, *a, _name=name, _orig=original, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(ShardWriter, name, counted)
    return calls


def _bf16_copy(src, dst):
    """The tiny float32 model saved in bfloat16, with an odd-sized tensor first in the shard: the
    float32 ones after it are then not aligned to 4 bytes (the reader falls back to reads)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    (dst / "config.json").write_text(json.dumps(
        {**json.loads((src / "config.json").read_text()), "dtype": "bfloat16"}))
    tensors = {"zz.odd": torch.arange(3, dtype=torch.bfloat16)}
    for f in src.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = fh.get_tensor(k)
                tensors[k] = t if k.endswith("norm.weight") else t.to(torch.bfloat16)
    writer = ShardWriter(dst, plan_shards([TensorSpec(k, v.dtype, tuple(v.shape))
                                           for k, v in tensors.items()], 10**9))
    for k, v in tensors.items():
        writer.write(k, v)
    writer.finish()
    return dst


@pytest.mark.parametrize("case", ["float32", "float32_shards", "bf16_unaligned", "to_float16"])
def test_fast_paths_write_the_reference_bytes(case, tiny_models, peft_adapter, tmp_path,
                                              monkeypatch):
    base = tiny_models["llama"]
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    options = {}
    if case == "float32_shards":
        options["max_shard_size"] = 40_000  # several output shards, tensors split between them
    if case == "bf16_unaligned":
        base = _bf16_copy(base, tmp_path / "base")
        assert any(s.offset % 4 for s in checkpoint.list_tensors(locate_model_files(base))
                   if s.dtype == torch.float32)
    if case == "to_float16":
        options["dtype"] = "float16"  # a dtype change: nothing may be copied as stored
    reference = _reference(monkeypatch, base, adapter, tmp_path / "ref", **options)
    calls = _count_fast(monkeypatch)
    fast = _merge(base, adapter, tmp_path / "fast", **options)
    assert fast.keys() == reference.keys() and len(fast) >= 1
    for name in fast:
        assert fast[name] == reference[name], name
    assert calls["rows"] > 0
    assert (calls["copy_from"] == 0) if case == "to_float16" else (calls["copy_from"] > 0)


def test_a_short_base_shard_is_refused(tiny_models, tmp_path):
    """Reads are bounded by the file's size: a truncated shard is an error naming it, not a
    crash on a map past the end of the file."""
    from adapterctl.errors import InvalidAdapterError

    base = shutil.copytree(tiny_models["llama"], tmp_path / "base")
    shard = next(base.glob("*.safetensors"))
    files = locate_model_files(base)
    last = max(checkpoint.list_tensors(files), key=lambda s: s.offset)
    with open(shard, "r+b") as fh:
        fh.truncate(last.offset + 4)
    with checkpoint.CheckpointReader(files) as reader, \
            pytest.raises(InvalidAdapterError, match="truncated"):
        reader.get(last)
    with checkpoint.CheckpointReader(files) as reader:
        assert reader.raw(last) is None  # nothing to copy as stored either
