"""Benchmark: ``adapterctl merge`` vs PEFT (load + merge_and_unload + save_pretrained) vs ``cp -r``.

Builds a ~1.1B-parameter random bf16 Llama (TinyLlama shapes, 500 MB shards) and an r=16
all-linear adapter, then runs the tools side by side, each in its own process measured by
``/usr/bin/time`` (wall time, peak RSS), each followed by ``sync`` so written data is counted.
``cp -r`` + ``sync`` of the base is the floor: the same bytes read and written.

Rounds are interleaved (each round runs every tool once, in a rotated order, so a burst of load
from elsewhere hits all of them alike) and the figures are medians over ``--rounds`` (3); the
ratios are medians of the per-round ratios. Two page-cache states:

- ``warm``: the base's pages are in the page cache (the previous round read them);
- ``cold``: before each run, the base's files are evicted from the page cache with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` after a ``sync`` (their pages are clean, so the kernel
  drops them); ``fincore`` checks it. Only the base is evicted (Python, torch and the tools stay
  cached, as for anyone who merges twice); ``--drop-caches`` evicts everything instead
  (``echo 3 > /proc/sys/vm/drop_caches``, root only).

Prints one JSON document with the figures and the ratios. Run it alone on a quiet machine:

    flock /tmp/adapterctl-bench.lock python benchmarks/merge.py [--rounds 3] [--modes warm,cold]
        [--no-peft] [--ref OTHER_CHECKOUT]

``--ref`` adds another checkout of adapterctl (run with that folder on PYTHONPATH) as a fourth
tool, to compare two versions side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import write_llama_lora

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "merge"
PY = sys.executable
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                       num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                       max_position_embeddings=2048, tie_word_embeddings=False, dtype="bfloat16")


def make_base(path: Path) -> None:
    """Random bf16 weights streamed straight into 500 MB shards (no model in memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapterctl.io.checkpoint.shard_writer import ShardWriter, TensorSpec, plan_shards

    cfg = llama_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    shapes = {k: tuple(p.shape) for k, p in model.state_dict().items()}
    path.mkdir(parents=True)
    cfg.save_pretrained(str(path))
    shards = plan_shards([TensorSpec(k, torch.bfloat16, s) for k, s in shapes.items()], 500_000_000)
    gen = torch.Generator().manual_seed(0)
    writer = ShardWriter(path, shards)
    for k, s in shapes.items():
        t = torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02
        writer.write(k, t.to(torch.bfloat16))
    writer.finish()


def make_adapter(path: Path) -> None:
    dims = {"q_proj": (2048, 2048), "k_proj": (256, 2048), "v_proj": (256, 2048),
            "o_proj": (2048, 2048), "gate_proj": (5632, 2048), "up_proj": (5632, 2048),
            "down_proj": (2048, 5632)}
    write_llama_lora(path, llama_config().num_hidden_layers, dims, WORK / "base")


PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""


def evict(folder: Path, drop_all: bool) -> int:
    """Drop ``folder``'s files from the page cache; returns the bytes still cached (fincore)."""
    subprocess.run(["sync"], check=True)
    if drop_all:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        for f in folder.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    if not shutil.which("fincore"):
        return -1
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *map(str, folder.iterdir())],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split())


def timed_once(cmd: list[str], out: Path, env_path: Path, cold: bool, base: Path,
               drop_all: bool) -> dict:
    """Wall seconds (command + sync), peak RSS (GB) and CPU seconds of ``cmd`` in its process."""
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["sync"], check=True)
    cached = evict(base, drop_all) if cold else None
    env = {**os.environ, "PYTHONPATH": str(env_path), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], capture_output=True, text=True,
                          env=env, cwd=WORK)  # not the repo: -m would import its adapterctl
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    rss_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
    shutil.rmtree(out)
    # CPU seconds (user + system) of the process: steadier than wall time on a shared machine
    res = {"seconds": round(wall, 3), "peak_rss_gb": round(int(rss_kb) / 1e6, 3),
           "cpu_seconds": round(float(user) + float(system), 2)}
    if cached is not None:
        res["base_bytes_cached_at_start"] = cached
    return res


def tools(base: Path, adapter: Path, ref: str | None, peft: bool) -> dict[str, tuple[list[str], Path]]:
    def ours(name):
        return [PY, "-m", "adapterctl", "--quiet", "merge", str(base), str(adapter),
                "--output", str(WORK / f"out-{name}"), "--device", "cpu"]

    out = {"cp": (["cp", "-r", str(base), str(WORK / "out-cp")], REPO),
           "adapterctl": (ours("adapterctl"), REPO)}
    if ref:
        out["adapterctl_ref"] = (ours("adapterctl_ref"), Path(ref).resolve())
    if peft:
        out["peft"] = ([PY, "-c", PEFT_SCRIPT, str(base), str(adapter), str(WORK / "out-peft")], REPO)
    return out


def run_mode(mode: str, todo: dict, rounds: int, base: Path, drop_all: bool) -> dict:
    """Interleaved rounds (the order rotates each round); medians and per-round ratios."""
    runs: dict[str, list[dict]] = {name: [] for name in todo}
    names = list(todo)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            cmd, path = todo[name]
            runs[name].append(timed_once(cmd, WORK / f"out-{name}", path, mode == "cold", base,
                                         drop_all))
            print(f"[{mode} round {r + 1}] {name}: {runs[name][-1]}", file=sys.stderr)
    result: dict = {name: {"median_seconds": statistics.median(x["seconds"] for x in rs),
                           "median_peak_rss_gb": statistics.median(x["peak_rss_gb"] for x in rs),
                           "median_cpu_seconds": statistics.median(x["cpu_seconds"] for x in rs),
                           "runs": rs} for name, rs in runs.items()}

    def ratio(a, b, key="seconds"):
        return round(statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b])), 3)

    ratios = {"wall_vs_cp": ratio("adapterctl", "cp")}
    if "peft" in runs:
        ratios["wall_vs_peft"] = ratio("adapterctl", "peft")
        ratios["rss_vs_peft"] = ratio("adapterctl", "peft", "peak_rss_gb")
    if "adapterctl_ref" in runs:
        ratios["wall_vs_ref"] = ratio("adapterctl", "adapterctl_ref")
        ratios["cpu_vs_ref"] = ratio("adapterctl", "adapterctl_ref", "cpu_seconds")
        ratios["ref_wall_vs_cp"] = ratio("adapterctl_ref", "cp")
    result["ratios"] = ratios
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument("--ref", help="another adapterctl checkout to compare with")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold: drop every cached page (root), not only the base's")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    base, adapter = WORK / "base", WORK / "adapter"
    if not base.exists():
        make_base(base)
    if not adapter.exists():
        make_adapter(adapter)
    todo = tools(base, adapter, args.ref, not args.no_peft)
    results: dict = {"base_gb": round(sum(f.stat().st_size for f in base.iterdir()) / 1e9, 3),
                     "rounds": args.rounds, "cpus": os.cpu_count(),
                     "loadavg_at_start": os.getloadavg()}
    for mode in args.modes.split(","):
        if mode == "warm":  # the first read of the base is not a warm run
            subprocess.run(["cat", *map(str, base.iterdir())], stdout=subprocess.DEVNULL, check=True)
        results[mode] = run_mode(mode, todo, args.rounds, base, args.drop_caches)
    results["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
