"""Merge scaling (issue 16, goal 5): merge time and peak memory against model size, for
``adapterctl merge``, PEFT (load + ``merge_and_unload`` + ``save_pretrained``) and ``cp -r`` +
``sync`` of the same base (the floor: the same bytes read and written).

Bases are random bf16 Llamas built from configs (no download), sharded like real checkpoints, and
cached under ``benchmarks/_work/scaling/`` (git-ignored): 0.2B (500 MB shards), 1.1B (TinyLlama
shapes, 500 MB shards) and 3.2B (Llama-3.2-3B shapes, tied embeddings, 2 GB shards). Each gets an
r=16 adapter on all seven linear modules. Every run is its own process, followed by ``sync`` (its
wall time includes the sync); peak RSS is the child's own (``wait4``). Rounds are interleaved
(cp, ours, PEFT, then again), each round starting with the next tool in turn (the run after a
deletion and a ``sync`` can be the slower one: no tool is always first), and the figure is the
median; the base is read once before the first round, so the page cache is warm for every tool
alike.

    python benchmarks/merge_scaling.py [--sizes 0.2B,1.1B,3B] [--rounds 3] [--json PATH] [--clean]
        [--no-peft] [--ref OTHER_CHECKOUT]

``--ref`` adds another checkout of adapterctl as a tool (``adapterctl-ref``: that folder on
PYTHONPATH), run in the same interleaved rounds, to compare two versions side by side. The JSON
has the least-squares line of each tool (seconds = a + b x GB on disk) with its projection to
8B and 70B bf16 Llamas (16.1 GB and 141 GB), and the 1-minute load average at each run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import write_llama_lora

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "scaling"
PY = sys.executable
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Size:
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie: bool
    shard_bytes: int

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden,
                           intermediate_size=self.inter, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           max_position_embeddings=2048, tie_word_embeddings=self.tie,
                           dtype="bfloat16")

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each targeted module."""
        hd = self.hidden // self.heads
        q, kv = self.heads * hd, self.kv_heads * hd
        return {"q_proj": (q, self.hidden), "k_proj": (kv, self.hidden),
                "v_proj": (kv, self.hidden), "o_proj": (self.hidden, q),
                "gate_proj": (self.inter, self.hidden), "up_proj": (self.inter, self.hidden),
                "down_proj": (self.hidden, self.inter)}


MB = 1_000_000
SIZES = {
    # --quick: a few MB, for the smoke test (tests/benchmarks/test_run_all.py)
    "tiny": Size(64, 160, 2, 4, 2, 512, False, 1 * MB),
    "small": Size(128, 352, 4, 4, 2, 1024, False, 1 * MB),
    # the scaling line
    "0.2B": Size(1024, 2816, 12, 16, 4, 32000, False, 500 * MB),
    "1.1B": Size(2048, 5632, 22, 32, 4, 32000, False, 500 * MB),  # TinyLlama-1.1B
    "3B": Size(3072, 8192, 28, 24, 8, 128256, True, 2000 * MB),  # Llama-3.2-3B
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] merge_scaling: {msg}", file=sys.stderr, flush=True)


def build_base(size: Size, path: Path) -> None:
    """Random bf16 weights streamed straight into the planned shards (no model in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapterctl.io.checkpoint.shard_writer import ShardWriter, TensorSpec, plan_shards

    cfg = size.config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    shapes = {k: tuple(p.shape) for k, p in model.state_dict().items()}
    if size.tie:
        shapes.pop("lm_head.weight", None)  # a tied checkpoint stores the table once
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(str(tmp))
    specs = [TensorSpec(k, torch.bfloat16, s) for k, s in shapes.items()]
    gen = torch.Generator().manual_seed(0)
    writer = ShardWriter(tmp, plan_shards(specs, size.shard_bytes))
    for k, s in shapes.items():
        if k.endswith("norm.weight"):
            t = torch.ones(s, dtype=torch.bfloat16)
        else:
            t = torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)
        writer.write(k, t)
        del t
    writer.finish()
    tmp.rename(path)  # a half-built base is never mistaken for a cached one


def build_adapter(size: Size, path: Path, base: Path, r: int = 16) -> None:
    write_llama_lora(path, size.layers, size.linear_dims(), base, r)


def built(name: str) -> bool:
    """The ``name`` base and its adapter are in the cache (each is moved into place whole)."""
    return (WORK / name / "base").exists() and (WORK / name / "adapter").exists()


def build_in_child(name: str) -> None:
    """Build in a child process: this parent then never holds torch (nor its memory). Under a lock
    on the cache: two benchmarks (or two test workers) that need the same base build it once."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built(name):
            return  # built by whoever held the lock before us
        proc = subprocess.run([PY, __file__, "--build-only", "--sizes", name], env=env())
    if proc.returncode != 0:
        raise SystemExit(f"building the {name} base failed (exit {proc.returncode})")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""



class RunFailed(Exception):
    """One run failed or timed out: recorded for its tool, the other tools carry on."""


def rss_parts(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident kB of ``pid`` now: tensors and runtime vs mapped files."""
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                file = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return anon, file


def run_once(cmd: list[str], out: Path | None, timeout: float, pythonpath: str | None = None) -> dict:
    """Wall seconds of ``cmd`` + ``sync``, the child's own peak RSS (wait4), and the peaks of its
    anonymous and file-backed parts (sampled every 50 ms from /proc, so a lower bound)."""
    if out is not None and out.exists():
        shutil.rmtree(out)
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    errlog = tempfile.TemporaryFile()  # not a pipe: a chatty child would fill it and stall
    load = os.getloadavg()[0]
    run_env = {**env(), "PYTHONPATH": pythonpath} if pythonpath else env()
    # run outside any checkout: ``python -m`` puts the working folder first on sys.path
    proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.DEVNULL, stderr=errlog,
                            cwd=str(WORK))
    deadline = start + timeout
    peak_anon = peak_file = 0
    while True:
        anon, file = rss_parts(proc.pid)  # before wait4: the pid still names our child
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        if time.perf_counter() > deadline:
            proc.kill()
            proc.wait()
            raise RunFailed(f"timed out after {timeout:.0f} s")
        time.sleep(0.05)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - start
    errlog.seek(0)
    err = errlog.read().decode(errors="replace")
    errlog.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        log(f"failed (exit {proc.returncode}): {' '.join(cmd[:4])}\n{err[-3000:]}")
        last = err.strip().splitlines()[-1:] or [""]
        raise RunFailed(f"exit {proc.returncode}: {last[0][:300]}")
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": round(wall, 3), "loadavg_1min": round(load, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_anon_mb": round(peak_anon / 1024, 1), "peak_file_mb": round(peak_file / 1024, 1)}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def largest_tensor(base: Path) -> tuple[str, int]:
    """Name and bytes of the largest tensor, from the safetensors headers only."""
    best = ("", 0)
    for f in sorted(base.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                size = v["data_offsets"][1] - v["data_offsets"][0]
                best = max(best, (k, size), key=lambda x: x[1])
    return best


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_size(name: str, rounds: int, timeout: float, ref: str | None = None,
                 peft: bool = True) -> dict:
    size, root = SIZES[name], WORK / name
    base, adapter = root / "base", root / "adapter"
    t0 = time.perf_counter()
    if not built(name):
        log(f"{name}: building the random base and adapter under {root}")
        build_in_child(name)
    build_s = time.perf_counter() - t0
    base_bytes = dir_bytes(base)
    free = shutil.disk_usage(root).free
    if free < 2.2 * base_bytes:  # one output at a time, plus PEFT's and our temp folders
        raise SystemExit(f"{name}: {free / 1e9:.1f} GB free on disk, need "
                         f"{2.2 * base_bytes / 1e9:.1f} GB for the outputs")
    subprocess.run(f"cat {base}/*.safetensors > /dev/null", shell=True, check=True)  # warm cache
    tools, outs = commands(root, ref)
    skipped = {}
    if not peft:
        tools.pop("peft")
    if peft and mem_available() < 1.5 * base_bytes:  # PEFT holds the whole model in memory
        skipped["peft"] = (f"only {mem_available() / 1e9:.1f} GB of memory available for a "
                           f"{base_bytes / 1e9:.1f} GB model")
        tools.pop("peft")
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for i in range(rounds):
        order = list(tools.items())
        for tool, cmd in order[i % len(order):] + order[:i % len(order)]:  # each first in turn
            try:
                r = run_once(cmd, outs[tool], timeout, ref if tool == "adapterctl-ref" else None)
            except RunFailed as err:
                skipped[tool] = f"failed in round {i + 1}: {err}"
                tools.pop(tool)
                runs.pop(tool)
                continue
            runs[tool].append(r)
            log(f"{name}: round {i + 1}/{rounds} {tool:10s} {r['seconds']:7.2f} s  "
                f"peak RSS {r['peak_rss_mb']:8.0f} MB")
    n_params = sum(size.layers * (o * i) for o, i in size.linear_dims().values()) + \
        size.vocab * size.hidden * (1 if size.tie else 2) + size.hidden * (2 * size.layers + 1)
    tensor_name, tensor_bytes = largest_tensor(base)
    merged_bytes = 2 * max(o * i for o, i in size.linear_dims().values())  # bf16
    result = {"size": name, "params": n_params, "base_bytes": base_bytes,
              "shards": len(list(base.glob("*.safetensors"))), "shard_limit_bytes": size.shard_bytes,
              "adapter_bytes": dir_bytes(adapter), "largest_tensor": tensor_name,
              "largest_tensor_bytes": tensor_bytes, "largest_merged_tensor_bytes": merged_bytes,
              "tied_embeddings": size.tie,
              "build_seconds": round(build_s, 1), "skipped": skipped, "tools": {}}
    for tool, rs in runs.items():
        result["tools"][tool] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            **{k: statistics.median(r[k] for r in rs)
               for k in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb")},
            "runs": rs}
    return result


def commands(root: Path, ref: str | None = None) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """Each tool's command on ``root``'s base and adapter, and the folder it writes."""
    base, adapter = root / "base", root / "adapter"
    outs = {"cp": root / "out-cp", "adapterctl": root / "out-ours", "peft": root / "out-peft",
            "adapterctl-ref": root / "out-ref"}
    ours = [PY, "-m", "adapterctl", "--quiet", "merge", str(base), str(adapter), "--device", "cpu",
            "--output"]
    tools = {"cp": ["cp", "-r", str(base), str(outs["cp"])],
             "adapterctl": [*ours, str(outs["adapterctl"])],
             "peft": [PY, "-c", PEFT_SCRIPT, str(base), str(adapter), str(outs["peft"])]}
    if ref:
        tools["adapterctl-ref"] = [*ours, str(outs["adapterctl-ref"])]
    return tools, outs


def fit_line(sizes: list[dict]) -> dict:
    """Per tool: least squares seconds = a + b x GB on disk over the sizes measured, R², the
    ratio of its slope to cp's, and the line's projection to 8B and 70B bf16 Llamas."""
    lines = {}
    tools = {t for s in sizes for t in s["tools"]}
    for tool in sorted(tools):
        pts = [(s["base_bytes"] / 1e9, s["tools"][tool]["seconds"]) for s in sizes if tool in s["tools"]]
        if len(pts) < 2:
            continue
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        b = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
        a = my - b * mx
        ss = sum((y - my) ** 2 for _, y in pts)
        r2 = 1 - sum((y - a - b * x) ** 2 for x, y in pts) / ss if ss else 1.0
        lines[tool] = {"a_seconds": round(a, 3), "b_seconds_per_gb": round(b, 3), "r2": round(r2, 4),
                       "points": len(pts),
                       "projection_seconds": {k: round(a + b * gb, 1) for k, gb in PROJECT_GB.items()}}
    if "cp" in lines:
        for tool, line in lines.items():
            line["slope_vs_cp"] = round(line["b_seconds_per_gb"] / lines["cp"]["b_seconds_per_gb"], 2)
    return lines


#: bf16 bytes on disk of Llama-3.1-8B and Llama-3.1-70B (what a user merges into)
PROJECT_GB = {"8B": 16.06, "70B": 141.1}


def runtime_floor(rounds: int, timeout: float, peft: bool = True) -> dict:
    """Each tool's cost before its tensors: the same command on the ``tiny`` base (0.15M
    parameters), so every import and code path is there and the tensors weigh nothing."""
    root = WORK / "tiny"
    if not built("tiny"):
        build_in_child("tiny")
    tools, outs = commands(root)
    floor = {}
    for tool in ("adapterctl", "peft") if peft else ("adapterctl",):
        runs = [run_once(tools[tool], outs[tool], timeout) for _ in range(max(1, min(rounds, 2)))]
        floor[tool] = {k: statistics.median(r[k] for r in runs)
                       for k in ("seconds", "peak_rss_mb", "peak_anon_mb", "peak_file_mb")}
    log(f"runtime floor (tiny base): {floor}")
    return floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.2B,1.1B,3B", help=f"comma-separated, of {list(SIZES)}")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds allowed for one run")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--clean", action="store_true", help="delete the built bases afterwards")
    ap.add_argument("--no-peft", action="store_true", help="leave PEFT (and the runtime floor) out")
    ap.add_argument("--ref", metavar="CHECKOUT", help="another adapterctl checkout, run as a fourth tool")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        ap.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    if args.build_only:
        for n in names:
            root = WORK / n
            shutil.rmtree(root, ignore_errors=True)
            build_base(SIZES[n], root / "base")
            build_adapter(SIZES[n], root / "adapter", root / "base")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    peft = not args.no_peft
    ref = str(Path(args.ref).resolve()) if args.ref else None
    floor = runtime_floor(args.rounds, args.timeout, peft) if peft else None  # for the memory table
    doc = {"rounds": args.rounds, "runtime_floor": floor,
           "sizes": [measure_size(n, args.rounds, args.timeout, ref, peft) for n in names]}
    for s in doc["sizes"]:
        s["loadavg_1min"] = [r["loadavg_1min"] for t in s["tools"].values() for r in t["runs"]]
        cp = s["tools"].get("cp", {}).get("seconds")
        s["vs_cp"] = {t: round(v["seconds"] / cp, 2) for t, v in s["tools"].items() if cp and t != "cp"}
        if "cp" in s["tools"]:  # each round's ratio (the same load for both), then their median
            cps = [r["seconds"] for r in s["tools"]["cp"]["runs"]]
            s["vs_cp_median_of_rounds"] = {
                t: round(statistics.median(r["seconds"] / c for r, c in zip(v["runs"], cps)), 2)
                for t, v in s["tools"].items() if t != "cp" and len(v["runs"]) == len(cps)}
    doc["line"] = fit_line(doc["sizes"])
    if args.clean:
        for n in names:
            shutil.rmtree(WORK / n, ignore_errors=True)
    text = json.dumps(doc, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    for s in doc["sizes"]:
        cells = "  ".join(f"{t} {v['seconds']:.2f} s / {v['peak_rss_mb']:.0f} MB"
                          for t, v in s["tools"].items())
        print(f"{s['size']:>5s} ({s['base_bytes'] / 1e9:.2f} GB): {cells}", file=sys.stderr)


if __name__ == "__main__":
    main()
