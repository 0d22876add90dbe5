"""Benchmark: ``adapterctl merge`` vs PEFT (load + merge_and_unload + save_pretrained) vs ``cp -r``.

Builds a ~1.1B-parameter random bf16 Llama (TinyLlama shapes, 500 MB shards) and an r=16
all-linear adapter, then runs the three side by side, each in its own process measured by
``/usr/bin/time`` (wall time, peak RSS), each followed by ``sync`` so written data is counted;
best of BENCH_REPEATS (default 2) runs for each.
Prints one JSON document with the figures and the ratios. Run it alone on a quiet machine:

    flock /tmp/adapterctl-bench.lock python benchmarks/merge.py
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

    from adapterctl.io.shard_writer import ShardWriter, TensorSpec, plan_shards

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
    import torch
    from safetensors.torch import save_file

    cfg = llama_config()
    r, gen = 16, torch.Generator().manual_seed(1)
    dims = {"q_proj": (2048, 2048), "k_proj": (256, 2048), "v_proj": (256, 2048),
            "o_proj": (2048, 2048), "gate_proj": (5632, 2048), "up_proj": (5632, 2048),
            "down_proj": (2048, 5632)}
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        for name, (out, inp) in dims.items():
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            p = f"base_model.model.model.layers.{i}.{part}.{name}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(r, inp, generator=gen) * 0.01
            tensors[f"{p}.lora_B.weight"] = torch.randn(out, r, generator=gen) * 0.01
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 32,
        "target_modules": TARGETS, "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "base_model_name_or_path": str(WORK / "base")}, indent=2))


PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out)
"""


REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))


def timed(cmd: list[str], out: Path) -> dict:
    """Best of REPEATS runs (the same rule for every tool: the least disturbed by other load)."""
    runs = [timed_once(cmd, out) for _ in range(REPEATS)]
    return min(runs, key=lambda r: r["seconds"])


def timed_once(cmd: list[str], out: Path) -> dict:
    """Wall seconds (command + sync) and peak RSS (GB) of ``cmd`` in its own process."""
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["sync"], check=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    subprocess.run(["sync"], check=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(proc.stderr.strip().splitlines()[-1])
    return {"seconds": round(wall, 2), "peak_rss_gb": round(rss_kb / 1e6, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    base, adapter = WORK / "base", WORK / "adapter"
    if not base.exists():
        make_base(base)
    if not adapter.exists():
        make_adapter(adapter)
    results = {
        "cp": timed(["cp", "-r", str(base), str(WORK / "out-cp")], WORK / "out-cp"),
        "adapterctl": timed([PY, "-m", "adapterctl", "--quiet", "merge", str(base), str(adapter),
                             "--output", str(WORK / "out-ours"), "--device", "cpu"],
                            WORK / "out-ours"),
        "peft": timed([PY, "-c", PEFT_SCRIPT, str(base), str(adapter), str(WORK / "out-peft")],
                      WORK / "out-peft"),
    }
    ours, peft, cp = results["adapterctl"], results["peft"], results["cp"]
    results["ratios"] = {
        "wall_vs_peft": round(ours["seconds"] / peft["seconds"], 3),
        "rss_vs_peft": round(ours["peak_rss_gb"] / peft["peak_rss_gb"], 3),
        "wall_vs_cp": round(ours["seconds"] / cp["seconds"], 3),
    }
    results["base_gb"] = round(sum(f.stat().st_size for f in base.iterdir()) / 1e9, 3)
    for name in ("out-cp", "out-ours", "out-peft"):
        shutil.rmtree(WORK / name, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
