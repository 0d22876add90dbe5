"""eval's MLX variants, run by mlx-lm itself (the virtualenv ``.ci/engines/mlx.sh`` builds, given as
``ADAPTERCTL_MLX_PYTHON``): the bundled upper-lora as ``convert --to mlx`` writes it, and its rank-4
reduction converted too. The oracle runs mlx-lm on its own here (``mlx_lm.load(base,
adapter_path=...)``, one forward per text) and PEFT + transformers for the reference, and writes the
KL / top-1 / perplexity out (tests/core/eval/test_oracle.py); eval's figures must equal them."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tests.core.eval.test_oracle import EX, _compare, _peft_model, oracle
from tests.helpers import invoke

ORACLE = r"""
import json, sys
import numpy as np
import mlx.core as mx
from mlx_lm import load
model, _ = load(sys.argv[1], adapter_path=sys.argv[2])
rows = json.loads(open(sys.argv[3]).read())
out = [np.array(model(mx.array([ids]))[0].astype(mx.float32)) for ids in rows]
np.savez(sys.argv[4], *out)
"""


def mlx_python() -> str:
    py = os.environ.get("ADAPTERCTL_MLX_PYTHON")
    if not py:
        pytest.skip("ADAPTERCTL_MLX_PYTHON is unset: run `bash .ci/engines/mlx.sh` (CI does) to build mlx-lm")
    return py


class Logits:
    """A stand-in model for the oracle: mlx-lm's logits of each text, looked up by its token ids."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, input_ids):
        import torch

        class Out:
            logits = torch.from_numpy(self.table[tuple(input_ids[0].tolist())])[None]

        return Out()


def mlx_logits(adapter, texts, tmp_path) -> Logits:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(EX / "tiny-base"))
    rows = [tok(t)["input_ids"] for t in texts]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    proc = subprocess.run([mlx_python(), "-c", ORACLE, str(EX / "tiny-base"), str(adapter),
                           str(tmp_path / "rows.json"), str(tmp_path / "logits.npz")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(tmp_path / "logits.npz")
    return Logits({tuple(ids): saved[f"arr_{i}"] for i, ids in enumerate(rows)})


def test_mlx_variants_equal_mlx_lm_against_peft(tmp_path):
    py = mlx_python()
    texts = (EX / "held-out.txt").read_text().splitlines()[:6]
    data = tmp_path / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for args in (("convert", EX / "upper-lora", tmp_path / "r4", "--rank", "4"),
                 ("convert", EX / "upper-lora", tmp_path / "mlx", "--to", "mlx"),
                 ("convert", tmp_path / "r4", tmp_path / "mlx-r4", "--to", "mlx")):
        res = invoke("-q", *args)
        assert res.code == 0, res.stderr
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--variant", f"mlx={tmp_path / 'mlx'}", "--variant", f"mlx-r4={tmp_path / 'mlx-r4'}",
                 "--mlx-python", py, "--batch-size", "4")
    assert res.code == 0, res.stderr
    doc = res.json
    assert [(v["name"], v["kind"]) for v in doc["variants"]] == [("base", "base"), ("mlx", "mlx"),
                                                                 ("mlx-r4", "mlx")]
    expected = oracle(_peft_model(EX / "upper-lora"), {
        "mlx": mlx_logits(tmp_path / "mlx", texts, tmp_path),
        "mlx-r4": mlx_logits(tmp_path / "mlx-r4", texts, tmp_path),
    }, texts)
    _compare(doc, expected, rel_tail=1e-3)  # the p99/max of float32 rounding noise: one position each
    rows = {v["name"]: v for v in doc["variants"]}
    assert rows["mlx"]["kl_mean"] < 1e-6 and rows["mlx"]["top1_agreement"] == 1.0  # the same adapter
    assert 1e-6 < rows["mlx-r4"]["kl_mean"] < rows["base"]["kl_mean"]
    assert any("mlx-lm" in n for n in rows["mlx"]["notes"])


def test_broken_mlx_adapter_names_the_variant(tmp_path):
    """A folder mlx-lm cannot load fails naming the variant (no traceback, one JSON document)."""
    py = mlx_python()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapters.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "broken" / "adapter_config.json").write_text("{}")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "the little fox"}) + "\n")
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--variant", f"bad={tmp_path / 'broken'}", "--mlx-python", py)
    assert res.code != 0 and "variant 'bad': mlx-lm" in res.json["error"]["message"]
    assert len(res.stdout.strip().splitlines()) == 1
