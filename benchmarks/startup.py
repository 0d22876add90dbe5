"""Start-up: `adapterctl --help` and `adapterctl inspect --json` vs `import torch` and vs the PEFT
route (PeftConfig.from_pretrained + loading the weights file), same machine, same run.

Goal (issue 2): inspect in under a quarter of `import torch`, and >= 10x faster than PEFT.
Usage: python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import REPO, WORK, python, run_timed

# TinyLlama-1.1B shapes, r=16 on all linear layers: a realistic adapter (~50 MB in float32).
HIDDEN, INTER, LAYERS, KV = 2048, 5632, 22, 256
MODULES = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, KV),
           "self_attn.v_proj": (HIDDEN, KV), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (HIDDEN, INTER), "mlp.up_proj": (HIDDEN, INTER),
           "mlp.down_proj": (INTER, HIDDEN)}


def make_adapter(r: int = 16):
    import torch
    from safetensors.torch import save_file

    out = WORK / "startup-adapter"
    if (out / "adapter_model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(LAYERS):
        for name, (i, o) in MODULES.items():
            p = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(r, i, generator=g) * 0.01
            tensors[f"{p}.lora_B.weight"] = torch.randn(o, r, generator=g) * 0.01
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 32,
           "target_modules": [m.split(".")[-1] for m in MODULES], "base_model_name_or_path": "tiny",
           "bias": "none", "lora_dropout": 0.0, "init_lora_weights": True}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


PEFT_ROUTE = (
    "import sys\nfrom peft import PeftConfig\nfrom peft.utils import load_peft_weights\n"
    "cfg = PeftConfig.from_pretrained(sys.argv[1])\nsd = load_peft_weights(sys.argv[1], device='cpu')\n"
    "print(cfg.r, len(sd))\n"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    if args.make_only:
        make_adapter()
        return
    # Made in a child: a parent that imported torch would pass its peak RSS on to every child.
    subprocess.run([python(), __file__, "--make-only"], check=True)
    # an installed package has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise compile adapterctl's ~40 modules on every start
    subprocess.run([python(), "-m", "compileall", "-q", str(REPO / "adapterctl")], check=True)
    adapter = WORK / "startup-adapter"
    py = python()
    rows = {
        "adapterctl --help": [py, "-m", "adapterctl", "--help"],
        "adapterctl inspect --json": [py, "-m", "adapterctl", "--json", "inspect", str(adapter)],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "PEFT: PeftConfig + load weights": [py, "-c", PEFT_ROUTE, str(adapter)],
    }
    res = {name: run_timed(cmd, args.repeat) for name, cmd in rows.items()}
    for name, (t, rss) in res.items():
        print(f"{name:36s} {t * 1000:8.0f} ms  {rss:7.0f} MB")
    inspect_t = res["adapterctl inspect --json"][0]
    help_t, torch_t, peft_t = (res[k][0] for k in (list(rows)[0], list(rows)[2], list(rows)[3]))
    print(f"inspect / import torch: {inspect_t / torch_t:.3f}  (goal < 0.25)")
    print(f"help / import torch:    {help_t / torch_t:.3f}")
    print(f"PEFT route / inspect:   {peft_t / inspect_t:.1f}x  (goal >= 10x)")
    if args.json:
        doc = {"repeat": args.repeat, "rows": [{"case": name, "seconds": t, "peak_rss_mb": rss}
                                               for name, (t, rss) in res.items()],
               "inspect_vs_import_torch": inspect_t / torch_t, "help_vs_import_torch": help_t / torch_t,
               "peft_route_vs_inspect": peft_t / inspect_t}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
