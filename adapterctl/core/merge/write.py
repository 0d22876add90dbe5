"""Execute a :class:`~adapterctl.core.merge.plan.MergeJob`: stream base tensors through the deltas into
output shards, then write config, tokenizer and the other files and a model card (spec 6, 11.7).

The stages overlap: while a worker thread reads a base tensor through its map and updates it in
cache-sized blocks of rows (widened to float32, ``W += s·B@A`` fused in one ``addmm_``, rounded
once into a small reused buffer, written at its offset while still in cache), the kernel copies
untouched tensors file to file for another worker, the disk reads the next tensors ahead
(``posix_fadvise``) and writes back the finished ones (``sync_file_range``). ``threads`` workers
(default: every core this process may use), each with one torch intra-op thread; at most
``threads`` tensors are in flight, so peak memory is the adapters plus ``threads`` x one
tensor's blocks (a whole tensor only off the fused path), whatever the model's size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.lora.combine import combine_deltas, module_generator
from adapterctl.core.lora.delta import delta_weight, fold_lora, fold_lora_bias, mutated_init
from adapterctl.core.lora.expert_delta import apply_expert_ops
from adapterctl.core.merge.card import merged_card
from adapterctl.core.merge.plan import MergeJob, TensorTask
from adapterctl.core.merge.qlora import qlora_weight
from adapterctl.errors import MissingDependencyError
from adapterctl.io.checkpoint.reader import CheckpointReader
from adapterctl.io.checkpoint.shard_writer import RowWriter, ShardWriter
from adapterctl.io.folders.output_dir import Input, write_output_dir

F32 = torch.float32
#: weight files of any framework: never copied next to the merged weights
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
SKIP_FILES = {"config.json", "README.md", "model.safetensors.index.json", "pytorch_model.bin.index.json"}

Progress = Callable[[int, str], None]
#: tensors read, merged and written at once when ``threads`` is not given; None: one per core
WORKERS: int | None = None
#: the default's ceiling: each worker holds one tensor's working set (a whole float32 copy off the
#: blocked path: DoRA, experts, --qlora), so memory must not grow with a large machine's core count
MAX_DEFAULT_THREADS = 8
#: the default off the CPU: the device computes, two workers keep it fed while one reads or writes
ACCELERATOR_THREADS = 2


def merge_threads(threads: int | None = None, device: str = "cpu") -> int:
    """Worker threads of a merge: ``threads``, else ``WORKERS``, else on the CPU the cores this
    process may run on (``sched_getaffinity``: a container's or ``taskset``'s share, not the
    machine's), at most ``MAX_DEFAULT_THREADS``; on a GPU, ``ACCELERATOR_THREADS``."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return threads
    if WORKERS is not None:
        return WORKERS
    if device != "cpu":
        return ACCELERATOR_THREADS
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS))


@dataclass(frozen=True)
class MergeResult:
    output: str
    tensors_written: int
    tensors_merged: int
    bytes_written: int
    shards: list[str]
    files_copied: list[str]
    untie_embeddings: bool
    dtype: str
    device: str
    seconds: float
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when available; asking for CUDA without it is a missing-hardware error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            "--device cuda: no CUDA device is available",
            hint="Use --device cpu (the default when no GPU is found).",
        )
    return torch.device(device)


# ----- the maths of one tensor ----------------------------------------------------------------
def _apply_loras(
    cur: torch.Tensor, base0: torch.Tensor, task: TensorTask, job: MergeJob, device: torch.device
) -> torch.Tensor:
    weights = job.options.weights or (1.0,) * len(job.adapters)
    if job.options.combination != "linear":
        deltas = [delta_weight(op.weights, op.kind, device) for op in task.loras]
        gen = module_generator(job.options.seed, task.key)
        return cur + combine_deltas(
            deltas,
            [weights[op.adapter] for op in task.loras],
            job.options.combination,
            job.options.density,
            gen,
        )
    # PEFT's merge_and_unload order: adapter after adapter, with the engine's fold kernel, so a
    # merged model equals the attached one for any weight (DoRA included)
    for op in task.loras:
        cur = fold_lora(cur, base0, op.weights, op.kind, weights[op.adapter], device)
    return cur


def _is_plain_lora(task: TensorTask, job: MergeJob) -> bool:
    return (
        job.options.combination == "linear"
        and not task.changed_beyond_loras
        and all(
            op.weights.magnitude is None and op.kind in (LayerKind.LINEAR, LayerKind.CONV1D_GPT2)
            for op in task.loras
        )
    )


#: float32 elements per block of rows of the fused path (4 MB: the blocks sit in the L2/L3 cache);
#: the output bytes depend on it (BLAS rounds a row by where it falls in its block): fixed
BLOCK_ELEMENTS = 1 << 20
_local = threading.local()


def _scratch(rows: int, row_shape: tuple[int, ...]) -> torch.Tensor:
    """This thread's reused float32 block of ``rows`` x ``row_shape`` (grown when too small)."""
    need = rows * math.prod(row_shape)
    buf = getattr(_local, "block", None)
    if buf is None or buf.numel() < need:
        buf = _local.block = torch.empty(need, dtype=F32)
    return buf[:need].view(rows, *row_shape)


def fused_lora_merge(
    W: torch.Tensor,
    task: TensorTask,
    job: MergeJob,
    device: torch.device,
    out: torch.Tensor | RowWriter | None = None,
) -> torch.Tensor | RowWriter:
    """W + Σ s_i·w_i·B_i A_i for plain LoRA on Linear/Conv1D, in cache-sized row blocks.

    Same maths as ``fold_lora`` (float32, one rounding at the end), but each block of rows is
    widened, gets ``addmm_`` (ΔW = s·B@A accumulated in float32; at most one float32 ulp from
    PEFT's (B@A)*s then add, far below the output rounding) and is rounded into the output while
    it is still in cache: about 4x less memory traffic than full-size temporaries. ``out``
    receives the rows instead of a new tensor: a tensor, or ``ShardWriter.rows`` (each block is
    written to the output file while still in cache).
    """
    weights = job.options.weights or (1.0,) * len(job.adapters)
    factors = []
    for op in task.loras:
        A = op.weights.A.to(device=device, dtype=F32)
        B = op.weights.B.to(device=device, dtype=F32)
        # Conv1D stores W as (in, out): its ΔW is (s·B@A)^T = s·A^T@B^T
        left, right = (A.T, B.T) if op.kind.fan_in_fan_out else (B, A)
        factors.append((left, right, op.weights.scaling * weights[op.adapter]))
    if out is None:
        out = torch.empty(W.shape, dtype=task.out_dtype, device=device)
    rows = max(1, BLOCK_ELEMENTS // max(1, W.shape[1]))  # 4 MB of float32 per block
    scratch = _scratch(rows, W.shape[1:]) if device.type == "cpu" else None
    for r0 in range(0, W.shape[0], rows):
        if scratch is None:
            block = W[r0 : r0 + rows].to(device=device, dtype=F32)
        else:  # widened into this thread's reused block: no fresh 4 MB (page faults) per block
            block = scratch[: min(rows, W.shape[0] - r0)]
            block.copy_(W[r0 : r0 + rows])
        for left, right, scale in factors:
            block.addmm_(left[r0 : r0 + rows], right, alpha=scale)
        out[r0 : r0 + rows] = block  # the single rounding to the output dtype
    return out


def merge_tensor(
    W: torch.Tensor,
    task: TensorTask,
    job: MergeJob,
    device: torch.device,
    out: torch.Tensor | RowWriter | None = None,
) -> torch.Tensor | RowWriter:
    """The output tensor for ``task`` from the base tensor ``W``, rounded once to its dtype.

    ``out``: where the rows of the result may go as they are computed (``ShardWriter.rows``);
    returned when it was used, else the result is another tensor."""
    if task.loras and _is_plain_lora(task, job):
        return fused_lora_merge(W, task, job, device, out)
    if task.copy is not None and not (task.loras or task.bias_loras or task.tokens):
        return task.copy[1].to(task.out_dtype)
    base0 = W.to(device)
    if task.replacement is not None:
        base0 = task.replacement[1].to(device=device, dtype=W.dtype)
    if task.residual_init is not None:  # PiSSA/OLoRA: the base as trained is W - s·B0@A0 (1.7)
        op = task.loras[0]
        base0 = mutated_init(
            base0, op.weights.r, op.weights.scaling, task.residual_init, op.kind.fan_in_fan_out
        )[2]
    # Deltas in float32, rounded once to the output dtype at the end (PEFT's unsafe merge, 6.2).
    cur = base0.to(F32, copy=True)
    if task.loras:
        cur = _apply_loras(cur, base0, task, job, device)
    weights = job.options.weights or (1.0,) * len(job.adapters)
    if task.experts:  # target_parameters: each expert's slice (core/lora/expert_delta.py)
        cur = apply_expert_ops(cur, task.experts, W.dtype, weights, device)
    for op in task.bias_loras:
        cur = fold_lora_bias(cur, op.weights, weights[op.adapter], device)
    for _, idx, rows in task.tokens:
        cur.index_copy_(0, torch.tensor(idx, device=device), rows.to(device=device, dtype=F32))
    if task.copy is not None:
        cur = task.copy[1].to(device=device, dtype=F32)
    return cur.to(task.out_dtype)


# ----- the output folder ----------------------------------------------------------------------
def _write_config(job: MergeJob, folder: Path) -> None:
    config = dict(job.files.config)
    dtype = job.plan.dtype
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    config.pop("quantization_config", None)
    if job.plan.untie_embeddings:
        config["tie_word_embeddings"] = False
    config.update(job.config_updates)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_other_files(root: Path, folder: Path) -> list[str]:
    """Tokenizer, chat template, generation config and any other non-weight file of the base."""
    copied = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or p.name in SKIP_FILES or p.name.endswith(WEIGHT_SUFFIXES):
            continue
        if p.is_file():
            shutil.copy2(p, folder / p.name)
            copied.append(p.name)
        elif p.is_dir():
            # sub-folders may hold other copies of the weights (Llama's original/*.pth): skip them
            shutil.copytree(
                p,
                folder / p.name,
                symlinks=False,
                ignore=shutil.ignore_patterns(*(f"*{s}" for s in WEIGHT_SUFFIXES)),
            )
            copied.append(p.name + "/")
    return copied


def copies_as_stored(task: TensorTask, job: MergeJob) -> bool:
    """Whether the output tensor is the base tensor's bytes as stored: nothing changes it, no
    dtype change, not dequantized on read, not rounded by --qlora. Only these take the kernel-copy
    path."""
    return (
        not task.changed
        and task.source.quant is None
        and task.source.dtype == task.out_dtype
        and not (job.qlora and task.source.key in job.qlora.keys)
    )


def write_task(
    task: TensorTask, reader: CheckpointReader, writer: ShardWriter, job: MergeJob, device: torch.device
) -> int:
    """Read, merge and write one output tensor; returns its size in bytes.

    A tensor nothing changes is copied file to file in the kernel; a merged one is written block
    of rows by block of rows as the maths makes them where it can (the fused LoRA path), else
    as a whole."""
    if copies_as_stored(task, job):
        raw = reader.raw(task.source)
        if raw is not None and writer.copy_from(task.key, *raw):
            return writer.spec(task.key).nbytes
    W = qlora_weight(job.qlora, task.source.key, reader.get(task.source))  # --qlora
    if not (task.changed or W.dtype != task.out_dtype):
        return writer.write(task.key, W)
    # on a GPU the result comes back in one transfer, as before (no GPU to measure blocks on)
    rows = writer.rows(task.key) if W.dim() >= 2 and device.type == "cpu" else None
    out = merge_tensor(W, task, job, device, out=rows)
    del W
    if isinstance(out, RowWriter):  # only ever ``rows``: the blocks are written already
        return writer.wrote(task.key)
    return writer.write(task.key, out.cpu())


class _Readers:
    """One checkpoint reader per worker thread (a reader keeps one open file)."""

    def __init__(self, job: MergeJob):
        self.job, self._local, self._all = job, threading.local(), []

    def mine(self) -> CheckpointReader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = CheckpointReader(self.job.files)
            self._all.append(reader)
        return reader

    def close(self) -> None:
        for reader in self._all:
            reader.close()


def _work(
    task: TensorTask, readers: _Readers, writer: ShardWriter, job: MergeJob, device: torch.device
) -> int:
    with torch.inference_mode():  # thread-local: each worker enters it
        return write_task(task, readers.mine(), writer, job, device)


def _stream(
    job: MergeJob, folder: Path, device: torch.device, on_progress: Progress | None, workers: int
) -> int:
    """Read, merge and write tensor by tensor, ``workers`` tensors at once (torch, the maps' page
    faults and the kernel copies release the GIL, so every core works); the next tensors' bytes
    are asked of the disk ahead of time. At most ``workers`` tensors are in flight, which keeps
    memory bounded. Each shard is fsynced once, at the end."""
    readers, tasks = _Readers(job), job.tasks
    try:
        with (
            ShardWriter(folder, job.shard_plan, {"merged_by": "adapterctl"}) as writer,
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):
            _run(tasks, pool, readers, writer, job, device=device, on_progress=on_progress, workers=workers)
            writer.finish()
    finally:
        readers.close()  # after the pool's exit: no worker uses them any more
    return sum(task.changed for task in tasks)


def _run(
    tasks: list[TensorTask],
    pool: ThreadPoolExecutor,
    readers: _Readers,
    writer: ShardWriter,
    job: MergeJob,
    *,
    device: torch.device,
    on_progress: Progress | None,
    workers: int,
) -> None:
    pending: deque = deque()
    ahead = CheckpointReader(job.files)
    try:
        for i, task in enumerate(tasks):
            pending.append((pool.submit(_work, task, readers, writer, job, device), task.key))
            if i + workers < len(tasks):
                ahead.prefetch(tasks[i + workers].source)
            while len(pending) > workers or (pending and pending[0][0].done()):
                _finish_write(pending.popleft(), writer, on_progress)
        while pending:
            _finish_write(pending.popleft(), writer, on_progress)
    finally:
        for future, _ in pending:  # on an error: what has not started never will
            future.cancel()


def _finish_write(item, writer: ShardWriter, on_progress: Progress | None) -> None:
    future, key = item
    n = future.result()  # re-raises a worker's error (disk full...) in this thread
    writer.start_writeback(key)  # here: the main thread only waits, a blocked call costs nothing
    if on_progress:
        on_progress(n, key)


@contextmanager
def single_cpu_thread(device: torch.device):
    """One intra-op thread while merging on the CPU: the cores are used by running one tensor per
    worker thread instead. The work is thousands of small memory-bound ops (cache-sized blocks);
    with several OpenMP threads every op ends in a barrier, and when the cores are shared those
    barriers spin on descheduled threads: measured 15-25x slower on a loaded 2-core machine."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merge_inputs(job: MergeJob) -> list[Input]:
    """What a merge reads, which its output may never replace: the base and every adapter."""
    return [
        Input.model(job.files.root, job.plan.base),
        *(Input.adapter(a.files.root, a.source) for a in job.adapters),
    ]


def execute_merge(
    job: MergeJob,
    output: str | Path,
    force: bool = False,
    device: str = "auto",
    on_progress: Progress | None = None,
    command: str | None = None,
    *,
    threads: int | None = None,
) -> MergeResult:
    """Write the merged checkpoint into ``output`` atomically (nothing partial on any failure).

    ``threads``: tensors merged at once, each on one core (default: the cores, at most 8; two on a
    GPU; see :func:`merge_threads`); memory grows with it by one tensor's working set each."""
    start = time.monotonic()
    dev = resolve_device(device)
    workers = merge_threads(threads, dev.type)
    extra = sum(
        p.stat().st_size
        for p in job.files.root.iterdir()
        if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES)
    )
    with (
        torch.inference_mode(),
        single_cpu_thread(dev),
        write_output_dir(output, force, job.plan.output_bytes + extra, inputs=merge_inputs(job)) as tmp,
    ):
        merged = _stream(job, tmp, dev, on_progress, workers)
        _write_config(job, tmp)
        copied = _copy_other_files(job.files.root, tmp)
        (tmp / "README.md").write_text(merged_card(job.plan, command))
    return MergeResult(
        output=str(Path(output).expanduser().absolute()),
        tensors_written=len(job.tasks),
        tensors_merged=merged,
        bytes_written=job.plan.output_bytes,
        shards=job.plan.shards,
        files_copied=copied,
        untie_embeddings=job.plan.untie_embeddings,
        dtype=job.plan.dtype,
        device=str(dev),
        seconds=round(time.monotonic() - start, 3),
        threads=workers,
    )
