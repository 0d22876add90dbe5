"""``merge --to gguf``: the merged model as one GGUF file that llama.cpp and Ollama run, streamed.

The merge is the same job as a safetensors merge (:mod:`plan`, :func:`write.merge_tensor`), each
tensor merged in float32 and rounded once, to the GGUF type: F32/F16/BF16/Q8_0 written here with
the ``gguf`` package's numpy quantizers (llama.cpp's converter uses the same), any other type by
llama.cpp's own ``llama-quantize`` run on an F16 file (never a home-made K-quant). Names, the
Llama q/k row permutation and the metadata follow llama.cpp's ``convert_hf_to_gguf.py``
(core/engine_rules/gguf_arch.py, gguf_hparams.py, gguf_model.py). One tensor is in memory at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapterctl.core.engine_rules.gguf_arch import GGUFBase, permute_rows, read_gguf_base, tensor_name_map
from adapterctl.core.merge.ollama import ollama_modelfile
from adapterctl.core.merge.plan import MergeJob
from adapterctl.core.merge.qlora import qlora_weight
from adapterctl.core.merge.write import merge_inputs, merge_tensor, resolve_device, single_cpu_thread
from adapterctl.errors import MissingDependencyError, UnsupportedError, UsageError
from adapterctl.io.checkpoint.reader import CheckpointReader
from adapterctl.io.folders.output_dir import write_output_file
from adapterctl.io.formats.gguf_hparams import DROPPED_SUFFIXES, MODEL_ARCHS, add_hparams, llama3_rope_factors
from adapterctl.io.formats.gguf_model import GGUFModelWriter, add_vocab, encode, qtype_of, read_bpe_vocab

#: written here: --outtype -> llama.cpp's file type (gguf.LlamaFileType)
DIRECT = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
#: llama-quantize's types that need no importance matrix (tools/quantize/quantize.cpp QUANT_OPTIONS)
QUANTIZE_TYPES = (
    "Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q2_K_S Q3_K Q3_K_S Q3_K_M Q3_K_L IQ4_NL IQ4_XS Q4_K Q4_K_S Q4_K_M "
    "Q5_K Q5_K_S Q5_K_M Q6_K TQ1_0 TQ2_0"
).split()
LLAMA_CPP_ENV = "ADAPTERCTL_LLAMA_CPP"


@dataclass(frozen=True)
class GGUFTensor:
    key: str  # the output tensor of the merge job
    name: str  # its llama.cpp name
    shape: tuple[int, ...]
    qtype: str  # ggml type written here (before llama-quantize)
    permute_heads: int | None = None  # llama.cpp's q/k row permutation with this many heads


@dataclass(frozen=True)
class GGUFTarget:
    """What the GGUF holds, decided before anything is written."""

    facts: GGUFBase
    outtype: str  # as asked: f32, f16, bf16, q8_0 or a llama-quantize type
    tensors: list[GGUFTensor]
    quantize: Path | None  # llama-quantize, for types not written here
    nbytes: int


@dataclass(frozen=True)
class GGUFMergeResult:
    """``merge --to gguf``'s result (``--json`` shape)."""

    output: str
    arch: str
    outtype: str
    tensors_written: int
    tensors_merged: int
    bytes_written: int
    types: dict[str, int]
    tokenizer_pre: str
    vocab_size: int
    quantized_by: str | None
    device: str
    seconds: float
    ollama_modelfile: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----- planning ------------------------------------------------------------------------------
def find_llama_quantize(llama_cpp: str | Path | None) -> Path | None:
    """llama.cpp's llama-quantize: in ``--llama-cpp DIR`` (or $ADAPTERCTL_LLAMA_CPP), else on PATH."""
    for root in (llama_cpp, os.environ.get(LLAMA_CPP_ENV)):
        if not root:
            continue
        root = Path(root).expanduser()
        for cand in (root / "build/bin/llama-quantize", root / "bin/llama-quantize", root / "llama-quantize"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return cand
        if root == Path(str(llama_cpp)).expanduser():
            raise MissingDependencyError(
                f"--llama-cpp {llama_cpp}: no llama-quantize in it (looked in build/bin, bin and the folder)",
                hint="Build it: cmake --build build --target llama-quantize",
            )
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def _outtype(outtype: str, llama_cpp) -> tuple[str, Path | None]:
    low = outtype.lower()
    if low in DIRECT:
        return low, None
    up = outtype.upper()
    if up not in QUANTIZE_TYPES:
        raise UsageError(
            f"--outtype {outtype!r}: not a type merge --to gguf writes",
            hint="Written directly: "
            + ", ".join(DIRECT)
            + "; through llama.cpp's llama-quantize: "
            + ", ".join(QUANTIZE_TYPES)
            + " (types that need an importance matrix are not offered).",
        )
    exe = find_llama_quantize(llama_cpp)
    if exe is None:
        raise MissingDependencyError(
            f"--outtype {up} is written by llama.cpp's llama-quantize, which was not found",
            hint=f"Pass --llama-cpp DIR (a llama.cpp build), set ${LLAMA_CPP_ENV}, or put llama-quantize "
            "on PATH; f32, f16, bf16 and q8_0 need no llama.cpp.",
        )
    return up, exe


def _facts(job: MergeJob) -> GGUFBase:
    archs = job.files.config.get("architectures") or []
    hf_arch = archs[0] if archs and isinstance(archs[0], str) else None
    if hf_arch not in MODEL_ARCHS:
        said = f"architecture {hf_arch!r}" if hf_arch else "config.json names no architectures"
        raise UnsupportedError(
            f"{job.plan.base}: {said}: not one merge --to gguf writes",
            hint="Written: " + ", ".join(MODEL_ARCHS) + ". Merge to safetensors (no --to) and convert "
            "with llama.cpp's convert_hf_to_gguf.py, which knows its other architectures.",
        )
    return read_gguf_base(job.files.root, job.plan.base)


def plan_gguf(job: MergeJob, outtype: str = "f16", llama_cpp: str | Path | None = None) -> GGUFTarget:
    """Every tensor's llama.cpp name, type and rearrangement; refuses (before anything is written)
    an architecture, tensor, tokenizer or type llama.cpp cannot take."""
    facts = _facts(job)
    kind, exe = _outtype(outtype, llama_cpp)
    read_bpe_vocab(job.files.root, facts.config["vocab_size"])  # refuses a tokenizer now
    gguf, names = tensor_name_map(facts)
    written = "f16" if exe else kind
    out: list[GGUFTensor] = []
    if (factors := llama3_rope_factors(facts.config)) is not None:
        out.append(GGUFTensor("", "rope_freqs.weight", tuple(factors.shape), "F32"))
    for task in job.tasks:
        if task.key.endswith(DROPPED_SUFFIXES):
            continue
        name = names.get_name(task.key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedError(
                f"{job.plan.base}: tensor {task.key} has no name in llama.cpp's "
                f"{facts.rule.gguf_arch!r} architecture",
                hint="Merge to safetensors (no --to) and convert with llama.cpp's convert_hf_to_gguf.py.",
            )
        heads = None
        if facts.rule.qk_permute and name.endswith(("attn_q.weight", "attn_q.bias")):
            heads = facts.n_head
        elif facts.rule.qk_permute and name.endswith(("attn_k.weight", "attn_k.bias")):
            heads = facts.n_head_kv
        shape = tuple(task.source.shape)
        qtype = qtype_of(shape, written, name.endswith("_norm.weight"))
        out.append(GGUFTensor(task.key, name, shape, qtype, heads))
    nbytes = sum(_nbytes(gguf, t) for t in out)
    return GGUFTarget(facts, kind, out, exe, nbytes)


def _nbytes(gguf, t: GGUFTensor) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.qtype]]
    n = 1
    for d in t.shape[:-1]:
        n *= d
    return n * (t.shape[-1] // block) * size


# ----- writing -------------------------------------------------------------------------------
def _file_type(gguf, kind: str) -> int:
    return int(gguf.LlamaFileType[DIRECT.get(kind, "MOSTLY_F16")])


def _write(job: MergeJob, target: GGUFTarget, path: Path, name: str, dev: torch.device, on_progress) -> int:
    facts = target.facts
    writer = GGUFModelWriter(path, facts.rule.gguf_arch)
    w, gguf = writer.writer, writer.gguf
    for t in target.tensors:
        writer.declare(t.name, t.shape, t.qtype)
    w.add_name(name)
    w.add_size_label(gguf.size_label(*w.get_total_parameter_count()))
    kind = "f16" if target.quantize else target.outtype
    add_hparams(w, gguf, facts.hf_arch, facts.config, _file_type(gguf, kind))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(w, job.files.root, read_bpe_vocab(job.files.root, facts.config["vocab_size"]))
    tasks = {task.key: task for task in job.tasks}
    merged = 0
    try:
        writer.start()
        with CheckpointReader(job.files) as reader:
            for t in target.tensors:
                if not t.key:  # rope_freqs: computed from config.json
                    writer.write(encode(llama3_rope_factors(facts.config), t.qtype))
                    continue
                task = tasks[t.key]
                W = qlora_weight(job.qlora, task.source.key, reader.get(task.source))
                out = merge_tensor(W, task, job, dev) if task.changed else W
                assert isinstance(out, torch.Tensor)  # no out= given: merge_tensor returns a tensor
                merged += task.changed
                # F16 is rounded by torch (all cores; the same round-to-nearest-even as numpy's cast)
                arr = out.to(torch.float16 if t.qtype == "F16" else torch.float32).cpu().numpy()
                del W, out
                if t.permute_heads is not None:
                    arr = permute_rows(arr, t.permute_heads, None)
                writer.write(encode(arr, t.qtype))
                if on_progress:
                    on_progress(4 * arr.size, t.key)
    finally:
        writer.close()
    return merged


def _quantize(exe: Path, src: Path, dest: Path, kind: str) -> None:
    proc = subprocess.run(
        [str(exe), str(src), str(dest), kind, str(os.cpu_count() or 1)], capture_output=True, text=True
    )
    if proc.returncode:
        raise UnsupportedError(
            f"llama-quantize ({exe}) failed with exit code {proc.returncode} quantizing to {kind}: "
            + proc.stderr.strip()[-800:],
            hint="Try another --outtype, or q8_0/f16 (written without llama.cpp).",
        )


def write_gguf(
    job: MergeJob,
    target: GGUFTarget,
    output: str | Path,
    force: bool = False,
    device: str = "cpu",
    on_progress=None,
) -> GGUFMergeResult:
    """Write the merged model at ``output`` (atomically: nothing is left on any failure)."""
    start = time.monotonic()
    dev = resolve_device(device)
    dest = Path(output).expanduser().absolute()
    with (
        torch.inference_mode(),
        single_cpu_thread(dev),
        write_output_file(dest, force, target.nbytes, inputs=merge_inputs(job), flag="--output") as tmp,
    ):
        if target.quantize is None:
            merged = _write(job, target, tmp, dest.stem, dev, on_progress)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.f16-", dir=dest.parent)
            os.close(fd)
            try:
                merged = _write(job, target, Path(name), dest.stem, dev, on_progress)
                _quantize(target.quantize, Path(name), tmp, target.outtype)
            finally:
                Path(name).unlink(missing_ok=True)
        size = tmp.stat().st_size
    return _result(
        job, target, dest, merged=merged, size=size, dev=str(dev), seconds=time.monotonic() - start
    )


def _result(job, target: GGUFTarget, dest: Path, *, merged: int, size: int, dev: str, seconds: float):
    vocab = read_bpe_vocab(job.files.root, target.facts.config["vocab_size"])
    types = Counter(t.qtype for t in target.tensors) if target.quantize is None else {}
    notes = []
    if target.quantize is not None:
        notes.append(f"quantized to {target.outtype} by {target.quantize} from an F16 merge")
    elif target.outtype == "q8_0" and types.get("F16"):
        notes.append(
            f"{types['F16']} tensor(s) have rows shorter than a Q8_0 block (32) and are stored as "
            "F16, as llama.cpp's converter does"
        )
    return GGUFMergeResult(
        output=str(dest),
        arch=target.facts.rule.gguf_arch,
        outtype=target.outtype,
        tensors_written=len(target.tensors),
        tensors_merged=merged,
        bytes_written=size,
        types=dict(types),
        tokenizer_pre=vocab.pre,
        vocab_size=len(vocab.tokens),
        quantized_by=str(target.quantize) if target.quantize else None,
        device=dev,
        seconds=round(seconds, 3),
        ollama_modelfile=ollama_modelfile(job.files.root, dest, vocab.tokens),
        notes=notes,
    )


def check_gguf_options(dtype: str | None, output: Path | None) -> None:
    if dtype not in (None, "auto"):
        raise UsageError(
            "--to gguf takes the GGUF type from --outtype, not --dtype",
            hint="e.g. --outtype f16 (or bf16, f32, q8_0, Q4_K_M).",
        )
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a folder; --to gguf writes one file (e.g. merged.gguf)")
