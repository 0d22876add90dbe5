"""Run every benchmark, then write ``benchmarks/RESULTS.md``, ``benchmarks/results.json`` and PNG
plots under ``benchmarks/plots/`` (issue 16's results page).

    python benchmarks/run_all.py              # full: each script's own sizes and repeats
    python benchmarks/run_all.py --quick      # tiny sizes, one round: a smoke test of the page
    python benchmarks/run_all.py --out DIR    # RESULTS.md, results.json and plots/ under DIR
    python benchmarks/run_all.py --steps generate,attach   # a subset (the page shows the rest
                                                           # as not run)

Each step is one benchmark script in its own process, asked for its figures with ``--json PATH``;
its output streams to stderr with the step's name, and a failed step is recorded on the page and
makes the exit status 1, the other steps still run. The full run takes about 20 minutes on 2
cores once the bases are built and cached under ``benchmarks/_work/`` (git-ignored; building
them the first time adds ~5 minutes: ``merge_scaling.py --clean`` removes them). Run it on a quiet
machine; the page says how loaded the machine was (load average sampled during the run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _machine import LoadSampler, machine_info  # noqa: E402


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    full: list[str]
    quick: list[str]
    env: dict = field(default_factory=dict)
    full_only: bool = False  # no small sizes: skipped by --quick


STEPS = [
    Step("merge_scaling", "merge_scaling.py", ["--rounds", "3"],
         ["--sizes", "tiny,small", "--rounds", "1"]),
    # merge.py's own 1.1B headline (its sizes are fixed: full run only)
    Step("merge", "merge.py", [], [], full_only=True),
    Step("generate", "generate.py", [],
         ["--hidden", "64", "--inter", "160", "--layers", "2", "--heads", "4", "--kv-heads", "2",
          "--vocab", "512", "--batch", "4", "--new-tokens", "4", "--reps", "1"]),
    Step("attach", "attach.py", ["--runs", "3"], ["--quick", "--runs", "1"]),
    Step("startup", "startup.py", ["--repeat", "5"], ["--repeat", "1"]),
    Step("convert", "convert.py", [],
         ["--size", "256", "--rank", "16", "--target", "4", "--dense-repeats", "1"]),
    Step("check", "check.py", ["--repeat", "5"], ["--repeat", "1", "--ranks", "1,8"]),
    Step("hub", "hub_bench.py", ["--repeat", "3"], ["--mb", "1", "--repeat", "1"]),
    Step("eval", "eval.py", [], ["--quick"]),
    # merge --to gguf vs merge + llama.cpp's convert_hf_to_gguf.py (1.1B; --quick: the small base)
    Step("merge_gguf", "merge_gguf.py", ["--size", "1.1B", "--rounds", "3"], ["--quick"]),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] run_all: {msg}", file=sys.stderr, flush=True)


def run_step(step: Step, quick: bool, tmp: Path, timeout: float) -> dict:
    """Run one script; returns its JSON figures, or {"error": ...} with the end of its output."""
    out = tmp / f"{step.name}.json"
    cmd = [sys.executable, str(HERE / step.script), *(step.quick if quick else step.full),
           "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", **step.env}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    # the whole group: a step's own children (merges, PEFT runs) hold its output pipe open too
    timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    tail: list[str] = []
    for line in proc.stdout:  # stream: the long steps print their own progress
        print(f"    {step.name} | {line.rstrip()}", file=sys.stderr, flush=True)
        tail = (tail + [line.rstrip()])[-30:]
    rc = proc.wait()
    timer.cancel()
    if rc != 0 or not out.is_file():
        why = f"exit {rc}" if rc >= 0 else f"killed after {timeout:.0f} s"
        return {"error": why, "output_tail": tail}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one round: checks the page is made; figures meaningless")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="folder for RESULTS.md, results.json and plots/ (default: benchmarks/)")
    ap.add_argument("--steps", help=f"comma-separated subset of {[s.name for s in STEPS]}")
    ap.add_argument("--note", default="", help="a line for the page's header (e.g. 'quiet machine')")
    ap.add_argument("--step-timeout", type=float, default=1800, help="seconds allowed for one step")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.steps.split(",")] if args.steps else [s.name for s in STEPS]
    unknown = sorted(set(names) - {s.name for s in STEPS})
    if unknown:
        ap.error(f"unknown step(s) {unknown}; choose from {[s.name for s in STEPS]}")
    chosen = [s for s in STEPS if s.name in names and not (args.quick and s.full_only)]
    sampler = LoadSampler()
    sampler.start()
    started = time.time()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="adapterctl-bench-") as tmp:
        for i, step in enumerate(chosen, 1):
            log(f"step {i}/{len(chosen)}: {step.name} ({step.script}) ...")
            t0 = time.perf_counter()
            results[step.name] = run_step(step, args.quick, Path(tmp), args.step_timeout)
            took = time.perf_counter() - t0
            results[step.name]["_step_seconds"] = round(took, 1)
            state = "FAILED: " + results[step.name]["error"] if "error" in results[step.name] else "done"
            log(f"step {i}/{len(chosen)}: {step.name} {state} in {took:.0f} s "
                f"(total {time.time() - started:.0f} s)")
    sampler.stop()
    skipped = {s.name: "not asked (--steps)" if s.name not in names else "full run only"
               for s in STEPS if s not in chosen}
    meta = {**machine_info(REPO), "mode": "quick" if args.quick else "full", "note": args.note,
            "load": sampler.summary(), "total_seconds": round(time.time() - started, 1),
            "steps_not_run": skipped}
    return write_outputs(args.out, meta, results)


def write_outputs(out: Path, meta: dict, results: dict) -> int:
    from _plots import make_plots
    from _results_page import results_page

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    plots = make_plots(results, meta, out / "plots")
    (out / "RESULTS.md").write_text(results_page(results, meta, plots, out))
    log(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and {len(plots)} plot(s) in "
        f"{meta['total_seconds']:.0f} s")
    failed = [k for k, v in results.items() if "error" in v]
    if failed:
        log(f"failed steps: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
