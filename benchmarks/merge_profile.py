"""Where a merge's time goes: one ``merge`` of a benchmark base and adapter in this process, with
each stage timed (wall seconds, and CPU seconds of the thread that ran it); with ``--stages``,
first each stage alone, one after the other on one thread (read, bf16->f32, B@A, add, round,
write, fsync: seconds per GB of the model), and ``cp -r`` + ``sync`` of the same base.

    python benchmarks/merge_profile.py [--size merge|1.1B|3B] [--stages] [--threads N]
        [--cold] [--json PATH]

Stages: importing torch and adapterctl, planning from headers, then per output tensor (summed
over the worker threads): kernel copies of untouched tensors, reading the base tensor (the map;
its pages are faulted in by the maths that touches them), the LoRA maths with its rows written
to the output file, and the final fsync of each shard. A worker's page faults count in its stage's time.
Run benchmarks/merge.py once first (it builds the base and the adapter), or
``merge_scaling.py --build-only --sizes 1.1B,3B`` for ``--size 1.1B``/``3B``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "merge"
SCALING = REPO / "benchmarks" / "_work" / "scaling"


class Stages:
    """Sums of wall and thread-CPU seconds per stage, from any thread."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, owner, name: str, stage: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - w
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - c

        setattr(owner, name, timed)


def stage_breakdown(job, out: Path) -> dict:
    """Each stage of the merge alone, one thread, one stage after the other over the whole model:
    what each costs per GB (no overlap). Merged tensors follow the fused path's blocks (4 MB of
    float32): read (pread from the page cache into a buffer), bf16->f32, B@A (the block's
    low-rank product, its own op here), add, round (to the output dtype), write (pwrite); plus
    the fused B@A + add (``addmm_``, what merge runs) timed apart, kernel copies of untouched
    tensors, and the final fsync."""
    import torch

    from adapterctl.core.merge.write import F32, _is_plain_lora, copies_as_stored
    from adapterctl.io.checkpoint.reader import CheckpointReader
    from adapterctl.io.safetensors.file_pages import copy_range

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "scratch.bin", os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}
    last_cpu = [time.thread_time()]

    def clock(stage: str, t0: float) -> float:
        """Add the wall and this thread's CPU seconds since the last clock to ``stage``: on a
        shared machine the CPU seconds are what the stage costs, the wall what it waited."""
        now, c = time.perf_counter(), time.thread_time()
        t[stage] = t.get(stage, 0.0) + now - t0
        cpu[stage] = cpu.get(stage, 0.0) + c - last_cpu[0]
        last_cpu[0] = c
        return now

    pos = merged_bytes = copied_bytes = 0
    weights = job.options.weights or (1.0,) * len(job.adapters)
    with CheckpointReader(job.files) as reader, torch.inference_mode():
        for task in job.tasks:
            s = task.source
            src_fd, src_off = reader.raw(s) or (None, 0)
            if copies_as_stored(task, job) and src_fd is not None:
                t0, last_cpu[0] = time.perf_counter(), time.thread_time()
                copy_range(src_fd, src_off, fd, pos, s.nbytes)
                clock("kernel copy (untouched tensors)", t0)
                pos, copied_bytes = pos + s.nbytes, copied_bytes + s.nbytes
                continue
            if not (task.loras and _is_plain_lora(task, job)) or src_fd is None:
                continue  # none in a plain LoRA merge of a bf16 base
            merged_bytes += s.nbytes
            W = torch.empty(s.shape, dtype=s.dtype)
            t0, last_cpu[0] = time.perf_counter(), time.thread_time()
            os.preadv(src_fd, [W.view(-1).view(torch.uint8).numpy()], src_off)
            clock("read (pread, page cache)", t0)
            factors = [(op.weights.B.to(F32), op.weights.A.to(F32),
                        op.weights.scaling * weights[op.adapter]) for op in task.loras]
            rows = max(1, (1 << 20) // W.shape[1])
            buf = torch.empty((rows, W.shape[1]), dtype=task.out_dtype)
            scratch = torch.empty((rows, W.shape[1]), dtype=F32)
            scratch2 = torch.empty((rows, W.shape[1]), dtype=F32)
            for r0 in range(0, W.shape[0], rows):
                t0, last_cpu[0] = time.perf_counter(), time.thread_time()
                fresh = W[r0 : r0 + rows].to(F32)
                t0 = clock("bf16->f32 into a fresh block (before)", t0)
                block = scratch[: fresh.shape[0]]
                block.copy_(W[r0 : r0 + rows])
                t0 = clock("bf16->f32 into a reused block (after)", t0)
                del fresh
                for left, right, scale in factors:
                    delta = left[r0 : r0 + rows] @ right
                    t0 = clock("B@A", t0)
                    block.add_(delta, alpha=scale)
                    t0 = clock("add", t0)
                    block2 = scratch2[: block.shape[0]]
                    block2.copy_(W[r0 : r0 + rows])
                    t0, last_cpu[0] = time.perf_counter(), time.thread_time()
                    block2.addmm_(left[r0 : r0 + rows], right, alpha=scale)
                    t0 = clock("B@A + add fused (addmm_, as merge runs it)", t0)
                n = block.shape[0]
                buf[:n].copy_(block)
                t0 = clock("round (f32 -> bf16)", t0)
                os.pwrite(fd, buf[:n].view(-1).view(torch.uint8).numpy(), pos)
                clock("write (pwrite, page cache)", t0)
                pos += buf[:n].numel() * buf.element_size()
    t0, last_cpu[0] = time.perf_counter(), time.thread_time()
    os.fsync(fd)
    clock("fsync (to disk)", t0)
    os.close(fd)
    shutil.rmtree(out)
    gb = (merged_bytes + copied_bytes) / 1e9
    return {"model_gb": round(gb, 3), "merged_gb": round(merged_bytes / 1e9, 3),
            "copied_gb": round(copied_bytes / 1e9, 3),
            "seconds": {k: round(v, 3) for k, v in t.items()},
            "seconds_per_model_gb": {k: round(v / gb, 3) for k, v in t.items()},
            "cpu_seconds_per_model_gb": {k: round(v / gb, 3) for k, v in cpu.items()}}


def cp_sync(base: Path, out: Path) -> tuple[float, float]:
    """Wall seconds of ``cp -r`` + ``sync`` of the base (the floor: the same bytes read and
    written), and cp's CPU seconds (user + system)."""
    import resource

    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(base), str(out)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="evict the base from the page cache first")
    ap.add_argument("--size", default="merge", help="merge (merge.py's 1.1B) or a merge_scaling size")
    ap.add_argument("--stages", action="store_true", help="also time each stage alone, serially")
    ap.add_argument("--threads", type=int, default=None, help="merge --threads (default: all cores)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = ap.parse_args()
    root = WORK if args.size == "merge" else SCALING / args.size
    base, adapter, out = root / "base", root / "adapter", root / "out-profile"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    if args.cold:
        sys.path.insert(0, str(REPO))
        from benchmarks.merge import evict

        evict(base, drop_all=False)
    t0 = time.perf_counter()
    import torch  # noqa: F401

    t1 = time.perf_counter()
    from adapterctl.core.merge import write
    from adapterctl.core.merge.plan import MergeOptions
    from adapterctl.core.merge.run import plan_from_refs
    from adapterctl.io.checkpoint import reader as checkpoint
    from adapterctl.io.checkpoint import shard_writer

    t2 = time.perf_counter()
    job = plan_from_refs(str(base), [str(adapter)], MergeOptions())
    t3 = plan_end = time.perf_counter()
    serial = stage_breakdown(job, root / "out-stages") if args.stages else None
    floor = cp_sync(base, root / "out-cp") if args.stages else None
    if args.stages:  # the stages and cp took time; the pipeline's clock starts afresh
        t3 = time.perf_counter()
    st = Stages()
    st.wrap(shard_writer.ShardWriter, "copy_from", "kernel copy (untouched tensors)")
    st.wrap(checkpoint.CheckpointReader, "get", "read (map the base tensor)")
    st.wrap(write, "merge_tensor", "LoRA maths + rows written (pwrite from a cache-hot buffer)")
    st.wrap(shard_writer.ShardWriter, "wrote", "start writeback")
    st.wrap(shard_writer.ShardWriter, "finish", "fsync + index")
    st.wrap(write, "_finish_write", "main thread: waiting for workers")
    cpu0 = time.process_time()
    more = {"threads": args.threads} if args.threads else {}  # --ref: a version without it
    result = write.execute_merge(job, out, device="cpu", **more)
    t4 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    t5 = time.perf_counter()
    shutil.rmtree(out)
    gb = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9
    doc = {
        "size": args.size, "base_gb": round(gb, 3),
        "wall_seconds": {"import torch": round(t1 - t0, 3), "import adapterctl": round(t2 - t1, 3),
                         "plan (headers)": round(plan_end - t2, 3), "execute_merge": round(t4 - t3, 3),
                         "sync after": round(t5 - t4, 3)},
        "merge_and_sync_seconds_per_gb": round((t5 - t3) / gb, 3),
        "stages_wall_seconds_summed_over_threads": {k: round(v, 3) for k, v in st.wall.items()},
        "stages_cpu_seconds": {k: round(v, 3) for k, v in st.cpu.items()},
        "execute_merge_process_cpu_seconds": round(time.process_time() - cpu0, 3),
        "threads": getattr(result, "threads", getattr(write, "WORKERS", None)), "tensors": result.tensors_written, "merged": result.tensors_merged,
        "serial_stages": serial,
        "cp_sync_seconds_per_gb": round(floor[0] / gb, 3) if floor is not None else None,
        "cp_cpu_seconds_per_gb": round(floor[1] / gb, 3) if floor is not None else None,
        "cold": args.cold, "loadavg": os.getloadavg()}
    text = json.dumps(doc, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)

if __name__ == "__main__":
    main()
