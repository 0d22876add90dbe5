"""`check --engine all` over 20 adapters (wall time, no torch import), and the DoRA -> LoRA
conversion's error against rank.

1. Twenty TinyLlama-1.1B-shaped adapters (22 layers, all linear modules; fp16, r=2 so the files
   stay small: check reads headers only, so the rank does not change its cost) of every kind
   the rules look at: plain, rsLoRA, rank/alpha patterns, DoRA, lora_bias, modules_to_save,
   saved embeddings, trainable tokens, bias="all", partial layers, embedding LoRA, rank 64.
   Goal (issue 13): under 0.5 s for the whole run, torch never imported.
2. examples/dragon-dora (DoRA + rsLoRA, r=8) converted --for vllm at ranks 1 to 192: the
   whole-adapter relative error ||ΔW_dora - ΔW_lora||_F / ||ΔW_dora||_F and how many of the
   DoRA adapter's greedy tokens the converted LoRA reproduces (3 prompts x 24 tokens, adapterctl's
   engine, float32).

Usage: python benchmarks/check.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, WORK, env, python

HIDDEN, INTER, LAYERS, KV, VOCAB = 2048, 5632, 22, 256, 32000
MODULES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, KV),
           "self_attn.v_proj": (HIDDEN, KV), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (HIDDEN, INTER), "mlp.up_proj": (HIDDEN, INTER),
           "mlp.down_proj": (INTER, HIDDEN)}
P = "base_model.model.model"
KINDS = {
    "plain": {}, "rslora": {"use_rslora": True},
    "patterns": {"rank_pattern": {"v_proj": 1}, "alpha_pattern": {"o_proj": 8}},
    "dora": {"use_dora": True}, "lora_bias": {"lora_bias": True},
    "modules_to_save": {"modules_to_save": ["norm"]}, "bias_all": {"bias": "all"},
    "tokens": {"trainable_token_indices": [1, 2, 3]}, "partial": {"layers_to_transform": [0, 1]},
    "embedding": {"embedding": True}, "rank64": {"r": 64},
}


def make_adapter(out, kind: str, kw: dict):
    import torch
    from safetensors.torch import save_file

    r = kw.get("r", 2)
    ranks = {"v_proj": 1} if "rank_pattern" in kw else {}
    layers = kw.get("layers_to_transform", range(LAYERS))
    t = {}
    for layer in layers:
        for name, (i, o) in MODULES.items():
            k = ranks.get(name.split(".")[-1], r)
            p = f"{P}.layers.{layer}.{name}"
            t[f"{p}.lora_A.weight"] = torch.zeros(k, i, dtype=torch.float16)
            t[f"{p}.lora_B.weight"] = torch.zeros(o, k, dtype=torch.float16)
            if kw.get("use_dora"):
                t[f"{p}.lora_magnitude_vector"] = torch.ones(o, dtype=torch.float16)
            if kw.get("lora_bias"):
                t[f"{p}.lora_B.bias"] = torch.zeros(o, dtype=torch.float16)
    if kw.get("modules_to_save"):
        t[f"{P}.norm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
    if kw.get("trainable_token_indices"):
        t[f"{P}.embed_tokens.token_adapter.trainable_tokens_delta"] = torch.zeros(3, HIDDEN)
    if kw.pop("embedding", False):
        t[f"{P}.embed_tokens.lora_embedding_A"] = torch.zeros(r, VOCAB, dtype=torch.float16)
        t[f"{P}.embed_tokens.lora_embedding_B"] = torch.zeros(HIDDEN, r, dtype=torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 4,
           "target_modules": [m.split(".")[-1] for m in MODULES], "bias": "none",
           "base_model_name_or_path": "TinyLlama/TinyLlama-1.1B", **kw}
    cfg.pop("embedding", None)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def zoo() -> list[str]:
    root = WORK / "check-zoo"
    names = [f"{kind}-{i}" for i in range(2) for kind in KINDS][:20]
    if not (root / names[-1] / "adapter_model.safetensors").exists():
        shutil.rmtree(root, ignore_errors=True)
        for name in names:
            kind = name.rsplit("-", 1)[0]
            make_adapter(root / name, kind, dict(KINDS[kind]))
    return [str(root / n) for n in names]


def check_timing(adapters: list[str], repeat: int) -> dict:
    """Process start to exit, median of ``repeat`` (check exits 10: some engines refuse)."""
    cmd = [python(), "-m", "adapterctl", "--json", "check", *adapters, "--engine", "all"]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 10:
            raise SystemExit(f"check failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    doc = json.loads(proc.stdout)
    counts = {v: sum(r["verdict"] == v for r in doc["results"])
              for v in ("serves", "changes", "refuses")}
    probe = ("import sys, runpy\nsys.argv=['adapterctl', '--json', 'check', *sys.argv[1:], "
             "'--engine', 'all']\ntry:\n    runpy.run_module('adapterctl', run_name='__main__')\n"
             "except SystemExit:\n    pass\nheavy=[m for m in ('torch','transformers','numpy') "
             "if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)\n")
    out = subprocess.run([python(), "-c", probe, *adapters], env=env(), capture_output=True,
                         text=True)
    heavy = re.search(r"HEAVY (\[.*\])", out.stderr).group(1)
    print(f"check --engine all, {len(adapters)} adapters x 6 engines: "
          f"{statistics.median(times):.3f} s wall, process start to exit (median of {repeat}; "
          f"goal < 0.5 s); heavy modules imported: {heavy}; verdicts {counts}")
    return {"adapters": len(adapters), "seconds": statistics.median(times), "repeat": repeat,
            "heavy_modules_imported": json.loads(heavy.replace("'", '"')), "verdicts": counts}


def dora_table(ranks: tuple[int, ...]) -> list[dict]:
    import torch

    from adapterctl import Placement, attach_adapter, detach, greedy_complete, load_base
    from adapterctl.core.convert.pipeline import ConvertRequest, run_convert

    torch.set_num_threads(1)
    base_dir, src = REPO / "examples/tiny-base", REPO / "examples/dragon-dora"
    prompts = ["the little fox", "at night,", "once upon a time"]
    base = load_base(str(base_dir), Placement(dtype="float32"))

    def tokens(folder):
        attach_adapter(base.model, folder, name="x")
        out = [c.completion_token_ids for c in greedy_complete(base.model, base.tokenizer,
                                                               prompts, 24)]
        detach(base.model, "x")
        return out

    want = tokens(src)
    print("\n| rank | whole-adapter relative error | greedy tokens equal to the DoRA adapter's |")
    print("|---|---|---|")
    rows = []
    for rank in ranks:
        out = WORK / f"dora-r{rank}"
        res = run_convert(ConvertRequest(str(src), str(out), force=True, base=str(base_dir),
                                         rank=rank, for_engine=("vllm",)))
        err = float(re.search(r"relative error ([0-9.e+-]+)", " ".join(res.notes)).group(1))
        got = tokens(out)
        same = sum(_common_prefix(a, b) for a, b in zip(want, got))
        print(f"| {rank} | {err:.2e} | {same}/{sum(map(len, want))} |")
        rows.append({"rank": rank, "relative_error": err, "tokens_equal": same,
                     "tokens": sum(map(len, want))})
    return rows


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ranks", default="1,2,4,8,16,32,64,128,192", help="DoRA table's ranks")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    timing = check_timing(zoo(), args.repeat)
    rows = dora_table(tuple(int(r) for r in args.ranks.split(",")))
    if args.json:
        doc = {"check_engine_all": timing, "dora_to_lora": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
