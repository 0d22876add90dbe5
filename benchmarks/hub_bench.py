"""Hub transfer benchmark against the local test Hub (tests/hubserver.py), side by side.

1. What `adapterctl inspect user/repo` fetches (config + safetensors header by HTTP Range) versus
   what PEFT fetches to learn the same (PeftConfig.from_pretrained + the weights file, as
   load_peft_weights does): bytes over the wire and wall time, each in a fresh subprocess.
2. `adapterctl push` (validation + card + one commit) versus the bare client
   (`HfApi.upload_folder`, no validation, no card): wall time, fresh subprocesses.

Run: flock /tmp/adapterctl-bench.lock python benchmarks/hub_bench.py [--mb 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hubserver import serve  # noqa: E402

TOKEN = "hf_bench_token"


def make_adapter(folder: Path, mb: int) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    hidden, r = 4096, 64
    per_module = 2 * hidden * r * 2  # A and B in F16
    layers = max(1, mb * 2**20 // (2 * per_module))
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            p = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{p}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float16)
            tensors[f"{p}.lora_B.weight"] = rng.standard_normal((hidden, r)).astype(np.float16)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 128,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "org/base"}))
    return folder


def run(env: dict, *argv: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


PEFT_LOAD = ("import sys\nfrom peft import PeftConfig\nfrom huggingface_hub import hf_hub_download\n"
             "from safetensors import safe_open\ncfg = PeftConfig.from_pretrained(sys.argv[1])\n"
             "p = hf_hub_download(sys.argv[1], 'adapter_model.safetensors')\n"
             "with safe_open(p, 'np') as f:\n    shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}\n")
UPLOAD = ("import sys, os\nfrom huggingface_hub import HfApi\napi = HfApi(endpoint=os.environ['HF_ENDPOINT'])\n"
          "api.create_repo(sys.argv[2], exist_ok=True)\napi.upload_folder(repo_id=sys.argv[2], folder_path=sys.argv[1])\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    hub = serve({TOKEN: "bench"})
    tmp = Path(tempfile.mkdtemp(prefix="hubbench-"))
    adapter = make_adapter(tmp / "lora", args.mb)
    base_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN,
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0"}
    py = sys.executable
    run({**base_env, "HF_HOME": str(tmp / "h0")}, py, "-m", "adapterctl", "push", str(adapter), "bench/lora")
    size = (adapter / "adapter_model.safetensors").stat().st_size
    rows = {"inspect": [], "peft": [], "push": [], "upload": []}
    bytes_ = {}
    for i in range(args.repeat):
        for name, argv in (("inspect", (py, "-m", "adapterctl", "--json", "inspect", "bench/lora")),
                           ("peft", (py, "-c", PEFT_LOAD, "bench/lora"))):
            before = hub.state.bytes_sent
            rows[name].append(run({**base_env, "HF_HOME": str(tmp / f"{name}{i}")}, *argv))
            bytes_[name] = hub.state.bytes_sent - before
        rows["push"].append(run({**base_env, "HF_HOME": str(tmp / f"p{i}")}, py, "-m", "adapterctl",
                                "push", str(adapter), f"bench/push{i}"))
        rows["upload"].append(run({**base_env, "HF_HOME": str(tmp / f"u{i}")}, py, "-c", UPLOAD,
                                  str(adapter), f"bench/upload{i}"))
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print(f"adapter: {size / 2**20:.1f} MiB safetensors; medians of {args.repeat} fresh subprocesses")
    print(f"inspect by id: {bytes_['inspect']:,} B over the wire vs PEFT {bytes_['peft']:,} B "
          f"({bytes_['peft'] / max(bytes_['inspect'], 1):.0f}x less); "
          f"{med['inspect']:.2f} s vs {med['peft']:.2f} s ({med['peft'] / med['inspect']:.1f}x faster)")
    print(f"push: {med['push']:.2f} s vs bare upload_folder {med['upload']:.2f} s "
          f"(ratio {med['push'] / med['upload']:.2f})")
    if args.json:
        doc = {"adapter_bytes": size, "repeat": args.repeat, "median_seconds": med,
               "bytes_over_the_wire": {"inspect": bytes_["inspect"], "peft": bytes_["peft"]}}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    hub.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
