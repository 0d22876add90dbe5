"""convert --to mlx, proven by mlx-lm itself (MLX's Linux CPU build, in the virtualenv that
``.ci/engines/mlx.sh`` builds): ``mlx_lm.load(base, adapter_path=ours)`` greedy tokens must equal
``adapterctl generate`` with the PEFT adapter; PEFT -> MLX -> PEFT must be bit-exact."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, invoke

DEFAULT = Path.home() / ".cache/adapterctl-engines/mlx-0.32.4-lm-0.32.2/bin/python"
SCRIPT = r'''
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1], adapter_path=sys.argv[2])
out = []
for prompt in json.loads(sys.argv[4]):
    ids = tok.encode(prompt)
    toks = []
    for t, _ in generate_step(mx.array(ids), model, max_tokens=int(sys.argv[3]),
                              sampler=lambda x: mx.argmax(x, axis=-1)):
        t = int(t)
        if t == tok.eos_token_id:
            break
        toks.append(t)
    out.append({"prompt_ids": ids, "ids": toks})
print(json.dumps(out))
'''


def mlx_python() -> Path:
    py = Path(os.environ.get("ADAPTERCTL_MLX_PYTHON") or DEFAULT)
    if not py.is_file():
        pytest.fail(f"mlx-lm is not installed at {py}: run `bash .ci/engines/mlx.sh` (CI does) "
                    "or set ADAPTERCTL_MLX_PYTHON")
    return py


def mlx_greedy(base: Path, adapter: Path, prompts: list[str], n: int) -> list[dict]:
    proc = subprocess.run([str(mlx_python()), "-c", SCRIPT, str(base), str(adapter), str(n),
                           json.dumps(prompts)], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        pytest.fail(f"mlx-lm failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(base, adapter, prompt, n) -> list[int]:
    res = invoke("--json", "-q", "generate", base, "--adapter", adapter, "--prompt", prompt,
                 "--max-new-tokens", str(n))
    assert res.code == 0, res.stdout
    return res.json["completions"][0]["completion_token_ids"]


@pytest.mark.parametrize("example", ["upper-lora", "dragon-dora"])
def test_mlx_lm_greedy_tokens_equal(example, tmp_path):
    base, lora = REPO / "examples/tiny-base", REPO / "examples" / example
    res = invoke("convert", lora, tmp_path / "mlx", "--to", "mlx")
    assert res.code == 0, res.stdout + res.stderr
    prompts = ["the little fox", "at night,"]
    got = mlx_greedy(base, tmp_path / "mlx", prompts, 20)
    for prompt, g in zip(prompts, got):
        assert g["ids"] == ours(base, lora, prompt, 20), (example, prompt)


def test_mlx_lm_patterns_padded_and_folded(tiny_models, peft_adapter, tmp_path):
    """One global rank and scale in mlx-lm: lower ranks zero-padded, other scalings folded."""
    lora = peft_adapter("llama", r=4, lora_alpha=8, use_rslora=True, seed=3,
                        target_modules=["q_proj", "v_proj", "down_proj"],
                        rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3})
    res = invoke("--json", "convert", lora, tmp_path / "mlx", "--to", "mlx", "--base",
                 tiny_models["llama"])
    assert res.code == 0, res.stdout
    assert res.json["padded"] and res.json["folded_scaling"]
    got = mlx_greedy(tiny_models["llama"], tmp_path / "mlx", ["the quick brown fox"], 12)
    assert got[0]["ids"] == ours(tiny_models["llama"], lora, "the quick brown fox", 12)
