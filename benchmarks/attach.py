"""Load + attach: adapterctl vs PEFT, wall time and peak RSS, on a ~1B-parameter random bf16 Llama
with an r=16 all-linear adapter (both made here, under benchmarks/_work/, git-ignored).

Weights are memory-mapped by transformers, so peak RSS counts only the pages a run touches.

    python benchmarks/attach.py [--runs 3] [--json]

Each measurement runs in a fresh subprocess (so peak RSS is that run's own), in two modes:
``end_to_end`` times the process from its first line to the adapter being ready (imports
included: what a user waits for); ``warm`` first loads a tiny Llama so every lazy import is done,
then times only load + attach.
PEFT: ``AutoModelForCausalLM.from_pretrained`` + ``PeftModel.from_pretrained``; adapterctl:
``load_base`` + ``attach_adapter``. Both load in the checkpoint's dtype (bf16) on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
MODEL = WORK / "llama-1b-bf16"
ADAPTER = WORK / "lora-r16-all-linear"
SHAPE = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=4)
#: --quick: a smoke test of this script (benchmarks/run_all.py --quick); its figures mean nothing
QUICK_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def make_model() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (MODEL / "config.json").is_file():
        return
    cfg = LlamaConfig(**SHAPE, max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(str(MODEL))  # sharded safetensors, like real checkpoints


def make_adapter() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (ADAPTER / "adapter_model.safetensors").is_file():
        return
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.bfloat16)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    pm.save_pretrained(str(ADAPTER))


CHILD = r"""
import json, resource, sys, time
t_start = time.perf_counter()
which, model, adapter, warm = sys.argv[1:5]
import torch
if warm != "-":  # load a tiny model of the same architecture first: every lazy import is done
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(warm)
if which == "peft":
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
else:
    from adapterctl.core.runtime.attach import attach_adapter
    from adapterctl.core.runtime.model import Placement, load_base
t0 = time.perf_counter()
if which == "peft":
    m = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
    m = PeftModel.from_pretrained(m, adapter)
else:
    m = load_base(model, Placement(dtype="auto"), tokenizer=False).model  # PEFT's path loads no tokenizer
    attach_adapter(m, adapter)
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
print(json.dumps({"seconds": t1 - (t_start if warm == "-" else t0), "peak_rss_mib": rss}))
"""


def make_tiny() -> Path:
    """A tiny Llama used to warm up imports before the timed section of the warm runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = WORK / "llama-tiny"
    if not (tiny / "config.json").is_file():
        LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1)).save_pretrained(str(tiny))
    return tiny


def measure(which: str, warm: Path | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, which, str(MODEL), str(ADAPTER),
                           str(warm) if warm else "-"],
                          capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="the figures as JSON: on stdout, or written to PATH (the table too)")
    ap.add_argument("--quick", action="store_true", help="a 2-layer tiny model: smoke test only")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        global MODEL, ADAPTER, SHAPE
        MODEL, ADAPTER, SHAPE = WORK / "llama-quick", WORK / "lora-quick", QUICK_SHAPE
    WORK.mkdir(parents=True, exist_ok=True)
    if args.make_only:
        make_model()
        make_adapter()
        make_tiny()
        return
    t = time.perf_counter()
    # Made in a child: Linux keeps a process's peak RSS across fork + exec, so children of a
    # parent that held the model would all report at least its peak.
    subprocess.run([sys.executable, __file__, "--make-only", *(["--quick"] if args.quick else [])],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    setup = time.perf_counter() - t
    tiny = WORK / "llama-tiny"
    result = {"model": "random Llama, 1.1B params, bf16, 16 layers; adapter r=16 all-linear (fp32)"
              if not args.quick else "--quick: a 2-layer tiny Llama (smoke test)", "shape": SHAPE,
              "runs": args.runs, "setup_seconds": round(setup, 1)}
    for mode, warm in (("end_to_end", None), ("warm", tiny)):
        runs = {"peft": [], "adapterctl": []}
        for _ in range(args.runs):  # alternate so both see the same page-cache state
            for which in runs:
                runs[which].append(measure(which, warm))
        med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
        result[mode] = {**med,
                        "time_ratio": med["adapterctl"]["seconds"] / med["peft"]["seconds"],
                        "rss_ratio": med["adapterctl"]["peak_rss_mib"] / med["peft"]["peak_rss_mib"]}
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for mode in ("end_to_end", "warm"):
        r = result[mode]
        for w in ("peft", "adapterctl"):
            print(f"{mode:10s} {w:11s} {r[w]['seconds']:6.2f} s   peak RSS {r[w]['peak_rss_mib']:7.0f} MiB")
        print(f"{mode:10s} ratios (adapterctl / PEFT): time {r['time_ratio']:.2f}, "
              f"peak RSS {r['rss_ratio']:.2f}")


if __name__ == "__main__":
    main()
