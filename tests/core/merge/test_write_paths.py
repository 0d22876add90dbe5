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


# ----- the fused path's blocks and worker threads ----------------------------------------------
def _old_blocks(W, factors, rows, dtype):
    """The fused path as it was before its reused float32 block: each block a fresh ``.to``
    (a view of a float32 ``W``, which it then changed in place: give it a copy)."""
    out = torch.empty(W.shape, dtype=dtype)
    for r0 in range(0, W.shape[0], rows):
        block = W[r0 : r0 + rows].to(torch.float32)
        for left, right, scale in factors:
            block.addmm_(left[r0 : r0 + rows], right, alpha=scale)
        out[r0 : r0 + rows] = block
    return out


def _as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [1 << 20, 1000])
def test_reused_blocks_write_the_bytes_of_fresh_ones(dtype, block, tiny_models, peft_adapter,
                                                     monkeypatch):
    """fused_lora_merge widens each block into one reused float32 buffer: the same bytes as a
    fresh float32 block each time (the code before), for every base dtype, tensors cut into
    blocks with a short last one, two adapters, Linear and GPT-2's Conv1D (transposed factors)."""
    monkeypatch.setattr(write, "BLOCK_ELEMENTS", block)
    cases = [("llama", ["q_proj", "down_proj"]), ("gpt2", ["c_attn", "c_fc"])]
    checked = 0
    for model, targets in cases:
        adapters = [peft_adapter(model, seed=s, r=4, target_modules=targets) for s in (0, 1)]
        job = plan_merge(tiny_models[model], load_adapters(adapters),
                         MergeOptions(weights=(0.7, -1.3), dtype=str(dtype).split(".")[1]))
        with checkpoint.CheckpointReader(job.files) as reader, torch.inference_mode():
            for task in job.tasks:
                if not (task.loras and write._is_plain_lora(task, job)):
                    continue
                W = reader.get(task.source).to(dtype)
                factors = []
                for op in task.loras:
                    A, B = op.weights.A.float(), op.weights.B.float()
                    left, right = (A.T, B.T) if op.kind.fan_in_fan_out else (B, A)
                    factors.append((left, right, op.weights.scaling * (0.7, -1.3)[op.adapter]))
                rows = max(1, block // W.shape[1])
                new = write.fused_lora_merge(W, task, job, torch.device("cpu"))
                assert isinstance(new, torch.Tensor) and new.dtype == dtype
                old = _old_blocks(W.clone(), factors, rows, dtype)
                assert _as_bytes(new) == _as_bytes(old), task.key
                # and within a rounding of one product over the whole tensor (BLAS may round a
                # row differently by where it falls in its block: not always the same bits)
                whole = _old_blocks(W.clone(), factors, W.shape[0], dtype).float()
                # the bound of a sum's rounding: eps x terms x the sum of the terms' magnitudes
                mag = W.float().abs() + sum(abs(s) * (lt.abs() @ rt.abs()) for lt, rt, s in factors)
                terms = 2 + sum(lt.shape[1] for lt, _, _ in factors)
                bound = torch.finfo(dtype).eps * terms * mag
                assert ((new.float() - whole).abs() <= bound).all(), task.key
                checked += 1
    assert checked >= 8


def _copy_as(src, dst, dtype):
    """The tiny float32 model saved in ``dtype`` (norms kept float32, as mixed checkpoints do)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    name = str(dtype).split(".")[1]
    (dst / "config.json").write_text(json.dumps(
        {**json.loads((src / "config.json").read_text()), "dtype": name}))
    tensors = {}
    for f in src.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = fh.get_tensor(k)
                tensors[k] = t if k.endswith("norm.weight") else t.to(dtype)
    writer = ShardWriter(dst, plan_shards([TensorSpec(k, v.dtype, tuple(v.shape))
                                           for k, v in tensors.items()], 60_000))
    for k, v in tensors.items():
        writer.write(k, v)
    writer.finish()
    return dst


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_threads_write_the_same_bytes(dtype, tiny_models, peft_adapter, tmp_path, monkeypatch):
    """Any number of worker threads writes the reference path's bytes (one tensor at a time,
    every tensor read into a buffer and merged as a whole), tensors cut into blocks."""
    monkeypatch.setattr(write, "BLOCK_ELEMENTS", 2000)
    base = _copy_as(tiny_models["llama"], tmp_path / "base", dtype)
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    reference = _reference(monkeypatch, base, adapter, tmp_path / "ref")
    job = plan_merge(base, load_adapters([adapter]), MergeOptions())
    for threads in (1, 2, 3):
        out = tmp_path / f"t{threads}"
        result = write.execute_merge(job, out, device="cpu", threads=threads)
        assert result.threads == threads
        got = {p.name: p.read_bytes() for p in sorted(out.iterdir())
               if p.name.endswith((".safetensors", ".json"))}
        assert got.keys() == reference.keys() and len(got) >= 2  # shards and their index
        for name in got:
            assert got[name] == reference[name], (threads, name)


def test_merge_threads_default_and_bounds(monkeypatch):
    """Default: WORKERS when set (tests), else the cores this process may run on, at most
    MAX_DEFAULT_THREADS; two on a GPU, whatever the cores."""
    import os

    assert write.merge_threads(3) == 3
    assert write.merge_threads(3, "cuda") == 3
    with pytest.raises(ValueError):
        write.merge_threads(0)
    monkeypatch.setattr(write, "WORKERS", None)
    assert write.merge_threads() == min(len(os.sched_getaffinity(0)), write.MAX_DEFAULT_THREADS)
    assert write.merge_threads(None, "cuda") == write.ACCELERATOR_THREADS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert write.merge_threads() == write.MAX_DEFAULT_THREADS
    monkeypatch.setattr(write, "WORKERS", 5)
    assert write.merge_threads() == 5
