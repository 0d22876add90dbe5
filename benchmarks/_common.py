"""Helpers shared by the benchmarks: timing subprocesses and reading their peak RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_timed(cmd: list[str], repeat: int = 1) -> tuple[float, float]:
    """Median wall seconds and max peak RSS (MB) of ``cmd`` run ``repeat`` times in a child."""
    times, peaks = [], []
    for _ in range(repeat):
        # wait4 gives the child's own peak RSS, unaffected by earlier children.
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
        peaks.append(usage.ru_maxrss / 1024)
    return statistics.median(times), max(peaks)


def python() -> str:
    return sys.executable


def write_llama_lora(path: Path, layers: int, dims: dict[str, tuple[int, int]], base: Path,
                     r: int = 16) -> None:
    """A seeded random r-rank LoRA on every (out, in) linear module of ``dims`` in each of a
    Llama's ``layers``, saved as PEFT saves it (alpha = 2r)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(layers):
        for name, (out, inp) in dims.items():
            part = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            p = f"base_model.model.model.layers.{i}.{part}.{name}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(r, inp, generator=gen) * 0.01
            tensors[f"{p}.lora_B.weight"] = torch.randn(out, r, generator=gen) * 0.01
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
        "target_modules": list(dims), "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "base_model_name_or_path": str(base)}, indent=2))
