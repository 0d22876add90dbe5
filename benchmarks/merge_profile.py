"""Where a merge's time goes: one ``merge`` of benchmarks/merge.py's base and adapter in this
process, with each stage timed (wall seconds, and CPU seconds of the thread that ran it).

    python benchmarks/merge_profile.py [--cold]

Stages: importing torch and adapterctl, planning from headers, then per output tensor (summed
over the worker threads): kernel copies of untouched tensors, reading the base tensor (the map;
its pages are faulted in by the maths that touches them), the LoRA maths with its rows written
to the output file, and the final fsync of each shard. A worker's page faults count in its stage's time.
Run benchmarks/merge.py once first (it builds the base and the adapter).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="evict the base from the page cache first")
    args = ap.parse_args()
    base, adapter, out = WORK / "base", WORK / "adapter", WORK / "out-profile"
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
    t3 = time.perf_counter()
    st = Stages()
    st.wrap(shard_writer.ShardWriter, "copy_from", "kernel copy (untouched tensors)")
    st.wrap(checkpoint.CheckpointReader, "get", "read (map the base tensor)")
    st.wrap(write, "merge_tensor", "LoRA maths + rows written (pwrite from a cache-hot buffer)")
    st.wrap(shard_writer.ShardWriter, "wrote", "start writeback")
    st.wrap(shard_writer.ShardWriter, "finish", "fsync + index")
    st.wrap(write, "_finish_write", "main thread: waiting for workers")
    cpu0 = time.process_time()
    result = write.execute_merge(job, out, device="cpu")
    t4 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    t5 = time.perf_counter()
    shutil.rmtree(out)
    print(json.dumps({
        "wall_seconds": {"import torch": round(t1 - t0, 3), "import adapterctl": round(t2 - t1, 3),
                         "plan (headers)": round(t3 - t2, 3), "execute_merge": round(t4 - t3, 3),
                         "sync after": round(t5 - t4, 3), "total": round(t5 - t0, 3)},
        "stages_wall_seconds_summed_over_threads": {k: round(v, 3) for k, v in st.wall.items()},
        "stages_cpu_seconds": {k: round(v, 3) for k, v in st.cpu.items()},
        "execute_merge_process_cpu_seconds": round(time.process_time() - cpu0, 3),
        "workers": write.WORKERS, "tensors": result.tensors_written, "merged": result.tensors_merged,
        "cold": args.cold, "loadavg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
