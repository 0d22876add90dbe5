"""Merge to a GGUF model (issue 28): ``adapterctl merge --to gguf --outtype f16`` against the two-step
route it replaces, ``adapterctl merge`` (bf16 safetensors) then llama.cpp's own
``convert_hf_to_gguf.py --outtype f16``, side by side: wall time and peak RSS of each process.

The base is merge_scaling.py's random bf16 Llama of that size (cached under
``benchmarks/_work/scaling/``, hard-linked into a sibling folder), with the bundled example's byte-level BPE tokenizer copied in (the
GGUF needs one; ids past it are padding tokens in both files); the adapter is r=16 on all seven
linear modules (merge_scaling.py's too). llama.cpp is the CI build (``$ADAPTERCTL_LLAMA_CPP``, else
``~/.cache/adapterctl-engines/llama.cpp-pypi-0.3.36``); only its Python converter is used, run
through the tests' wrapper (tests/interop/gguf_harness.py: it names the test tokenizer's
pre-tokenizer, which llama.cpp's hash table does not know). Rounds alternate the two routes;
figures are medians, the base is read once before the first round (warm page cache for both).

    python benchmarks/merge_gguf.py [--size 1.1B] [--rounds 3] [--json PATH]
    python benchmarks/merge_gguf.py --quick          # the small base (vocabulary > the tokenizer's), one round
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from merge_scaling import SIZES, WORK, build_in_child, built, env, log

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DEFAULT_LLAMA_CPP = Path.home() / ".cache/adapterctl-engines/llama.cpp-pypi-0.3.36"


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds (with a final sync) and the child's own peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    os.sync()
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def prepare(size_name: str) -> tuple[Path, Path]:
    scaling = WORK / size_name / "base"
    if not built(size_name):
        build_in_child(size_name)
    base = WORK / f"{size_name}-gguf-base"  # merge_scaling's files (linked) and a tokenizer
    if not base.exists():
        tmp = base.with_name(base.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for p in scaling.iterdir():
            if p.name != "config.json":
                os.link(p, tmp / p.name)  # hard links: the reader refuses symlinks out of a folder
        config = json.loads((scaling / "config.json").read_text())
        config["architectures"] = ["LlamaForCausalLM"]  # both GGUF writers look for it
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(REPO / "examples/tiny-base" / name, tmp / name)
        tmp.rename(base)
    adapter = WORK / size_name / "adapter"
    for p in sorted(base.glob("*.safetensors")):  # warm the page cache for both routes
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return base, adapter


def converter_wrapper(tmp: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.interop.gguf_harness import WRAPPER

    path = tmp / "wrapper.py"
    path.write_text(WRAPPER)
    return path


def run(size_name: str, rounds: int) -> dict:
    llama = Path(os.environ.get("ADAPTERCTL_LLAMA_CPP") or DEFAULT_LLAMA_CPP)
    if not (llama / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"llama.cpp not found at {llama}: run bash .ci/engines/llama_cpp.sh")
    base, adapter = prepare(size_name)
    ours, twostep = [], []
    with tempfile.TemporaryDirectory(dir=WORK) as t:
        tmp = Path(t)
        wrapper = converter_wrapper(tmp)
        for i in range(rounds):
            out = tmp / f"ours-{i}.gguf"
            log(f"{size_name} round {i + 1}: adapterctl merge --to gguf")
            ours.append(timed([PY, "-m", "adapterctl", "merge", str(base), str(adapter), "--to", "gguf",
                               "--outtype", "f16", "--device", "cpu", "-o", str(out)]))
            ours_bytes = out.stat().st_size
            out.unlink()
            st, ref = tmp / f"st-{i}", tmp / f"ref-{i}.gguf"
            log(f"{size_name} round {i + 1}: adapterctl merge + convert_hf_to_gguf.py")
            a = timed([PY, "-m", "adapterctl", "merge", str(base), str(adapter), "--device", "cpu", "-o", str(st)])
            jobs = tmp / "jobs.json"
            jobs.write_text(json.dumps([["convert_hf_to_gguf.py", [str(st), "--outfile", str(ref),
                                                                   "--outtype", "f16"]]]))
            b = timed([PY, str(wrapper), str(llama), str(jobs), str(tmp / "results.json")])
            errors = json.loads((tmp / "results.json").read_text())
            if errors[0]:
                raise SystemExit(f"convert_hf_to_gguf.py failed: {errors[0]}")
            twostep.append((a, b))
            ref_bytes = ref.stat().st_size
            shutil.rmtree(st)
            ref.unlink()
    med = statistics.median
    ours_s, ours_mb = med(x[0] for x in ours), max(x[1] for x in ours)
    merge_s, conv_s = med(x[0][0] for x in twostep), med(x[1][0] for x in twostep)
    two_mb = max(max(x[0][1], x[1][1]) for x in twostep)
    return {
        "size": size_name, "rounds": rounds, "outtype": "f16",
        "ours": {"seconds": round(ours_s, 2), "peak_rss_mb": round(ours_mb), "bytes": ours_bytes},
        "two_step": {"merge_seconds": round(merge_s, 2), "convert_seconds": round(conv_s, 2),
                     "seconds": round(merge_s + conv_s, 2), "peak_rss_mb": round(two_mb),
                     "merge_peak_rss_mb": round(max(x[0][1] for x in twostep)),
                     "convert_peak_rss_mb": round(max(x[1][1] for x in twostep)), "bytes": ref_bytes},
        "speedup": round((merge_s + conv_s) / ours_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.1B", choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the small base, one round")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = ap.parse_args()
    size, rounds = ("small", 1) if args.quick else (args.size, args.rounds)
    WORK.mkdir(parents=True, exist_ok=True)
    doc = run(size, rounds)
    o, t = doc["ours"], doc["two_step"]
    print(f"{size} merge to GGUF f16: adapterctl --to gguf {o['seconds']:.2f} s, {o['peak_rss_mb']} MB peak; "
          f"merge + convert_hf_to_gguf.py {t['seconds']:.2f} s ({t['merge_seconds']:.2f} + "
          f"{t['convert_seconds']:.2f}), {t['peak_rss_mb']} MB peak; {doc['speedup']}x")
    text = json.dumps(doc, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
