"""``generate --engine ray`` against the real Ray Data (ray 2.60.0) and vLLM's CPU build, in the
virtualenv ``.ci/engines/ray.sh`` builds (``$ADAPTERCTL_RAY_PYTHON``; adapterctl runs inside that
python with PYTHONPATH=<repo>, as a user runs it from that virtualenv). A local Ray is started for
each run (one replica, one CPU, a 1 GiB KV cache) and stopped after.

- the bundled examples' mixed JSONL (the base, upper-lora, and dragon-dora: DoRA, which vLLM
  refuses and which is converted to an exact full-rank LoRA first) gives our engine's greedy tokens,
  texts and logprobs (float32 on both sides), in the file's order, with the adapters staged in
  ``--stage``;
- a replica whose process dies on its first batch (``ADAPTERCTL_RAY_FAULT_ONCE``: it kills itself
  as an out-of-memory kill would) is restarted by Ray and its rows retried: the same tokens;
- ``--ray-address`` where nothing listens: exit 8 at once, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, CliResult, invoke

BASE = "examples/tiny-base"
PROMPTS = "examples/prompts.jsonl"
MAX_TOKENS = 16
#: vLLM on a shared CPU: no core pinning, a small KV cache, float32 like the reference
ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
FLAGS = ["--engine", "ray", "--replicas", "1", "--dtype", "float32", "--gpu-memory-utilization", "0.1"]

RAY_PYTHON = os.environ.get("ADAPTERCTL_RAY_PYTHON")
pytestmark = pytest.mark.skipif(
    not RAY_PYTHON, reason="ADAPTERCTL_RAY_PYTHON is unset: build Ray + vLLM's CPU build with "
    "`bash .ci/engines/ray.sh` and export its output (.ci/run does)")


def ray_cli(*args: str, env: dict | None = None, timeout: float = 900) -> CliResult:
    """``python -m adapterctl ARGS`` inside the Ray virtualenv."""
    assert RAY_PYTHON and Path(RAY_PYTHON).is_file(), f"no python at {RAY_PYTHON}"
    full = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([RAY_PYTHON, "-m", "adapterctl", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=full, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def ours() -> dict:
    res = invoke("--json", "-q", "generate", BASE, "--prompts", PROMPTS, "-n", str(MAX_TOKENS),
                 "--logprobs", "--dtype", "float32")
    assert res.code == 0, res.stdout + res.stderr
    return res.json


def assert_ours(doc: dict, mine: dict) -> None:
    """The same rows in the same (input) order: tokens, text, finish reason, logprobs within 1e-3."""
    assert doc["mode"] == "ray"
    assert [(c["id"], c["adapter"]) for c in doc["completions"]] == \
        [(c["id"], c["adapter"]) for c in mine["completions"]]
    for c, m in zip(doc["completions"], mine["completions"]):
        assert c["completion_token_ids"] == m["completion_token_ids"], c["id"]
        assert (c["completion"], c["finish_reason"], c["prompt_tokens"]) == \
            (m["completion"], m["finish_reason"], m["prompt_tokens"]), c["id"]
        assert max(abs(a - b) for a, b in zip(c["logprobs"], m["logprobs"])) < 1e-3, c["id"]


def test_mixed_jsonl_on_ray_gives_our_tokens(ours, tmp_path):
    stage = tmp_path / "stage"
    res = ray_cli("--json", "generate", BASE, "--prompts", PROMPTS, "-n", str(MAX_TOKENS),
                  "--logprobs", "--stage", str(stage), *FLAGS)
    assert res.code == 0, res.stdout[-3000:] + res.stderr[-5000:]
    doc = res.json
    assert_ours(doc, ours)
    assert {c["adapter"] for c in doc["completions"]} == {None, "upper-lora", "dragon-dora"}
    dora = next(a for a in doc["adapters"] if a["source"] == "examples/dragon-dora")
    assert any("convert --for vllm" in w for w in dora["warnings"])  # DoRA: converted, exact
    staged = sorted(p.name for p in stage.iterdir() if (p / "adapter_config.json").is_file())
    assert len(staged) == 2 and any(n.startswith("upper-lora-") for n in staged), staged
    assert doc["tokens_per_second"] > 0 and "local Ray" in res.stderr


def test_a_dead_replica_is_restarted_and_its_rows_retried(ours, tmp_path):
    marker = tmp_path / "killed-once"
    res = ray_cli("--json", "generate", BASE, "--prompts", PROMPTS, "-n", str(MAX_TOKENS), "--logprobs",
                  *FLAGS, env={"ADAPTERCTL_RAY_FAULT_ONCE": str(marker)})
    assert res.code == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert marker.exists() and "retries remaining" in res.stderr  # it died once, Ray retried
    assert_ours(res.json, ours)  # stdout: the one JSON document (Ray's messages went to stderr)


def test_unreachable_ray_address():
    t0 = time.monotonic()
    res = ray_cli("--json", "generate", BASE, "-p", "x", *FLAGS, "--ray-address", "127.0.0.1:9")
    assert res.code == 8, res.stdout + res.stderr[-3000:]
    err = json.loads(res.stdout)["error"]
    assert "--ray-address 127.0.0.1:9" in err["message"] and "ray start --head" in err["hint"]
    assert "Traceback" not in res.stderr and time.monotonic() - t0 < 120
