"""eval's figures on merges into a 4-bit base against an independent computation: transformers
quantizes the bundled base with bitsandbytes (load_in_4bit, nf4), bitsandbytes dequantizes each
Linear4bit into the float32 model, PEFT attaches the adapter unmerged; KL / top-1 / perplexity
written out as in test_oracle.py. The variants are `merge --qlora nf4` of the float base and a plain
`merge` of the 4-bit checkpoint transformers saved: both are that dequantized base plus ΔW.

The base's Linear input sizes (192, 512) are multiples of 64, where bitsandbytes' CPU dequantize is
right (tests/core/merge/test_qlora.py); each weight is dequantized as one flat tensor anyway."""

from __future__ import annotations

import json

import pytest

from tests.core.eval.test_oracle import EX, _compare, _peft_model, _texts, oracle
from tests.helpers import invoke


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import sys

    from tests.core.merge.test_qlora import load_4bit

    sys.path.insert(0, str(EX))
    from corpus import corpus

    root = tmp_path_factory.mktemp("eval4bit")
    data = root / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(4321, 8)))
    res = invoke("-q", "merge", EX / "tiny-base", EX / "upper-lora", "--output", root / "qlora",
                 "--qlora", "nf4")
    assert res.code == 0, res.stderr
    q = load_4bit(EX / "tiny-base", "nf4")
    q.save_pretrained(str(root / "q4"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / "q4" / name).write_bytes((EX / "tiny-base" / name).read_bytes())
    res = invoke("-q", "merge", root / "q4", EX / "upper-lora", "--output", root / "plain4",
                 "--dtype", "float32")
    assert res.code == 0, res.stderr
    assert "quantization_config" in json.loads((root / "q4" / "config.json").read_text())
    return root


def dequantized_peft(adapter):
    """The base as bitsandbytes quantized it (nf4), dequantized into float32, with PEFT's adapter."""
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.core.merge.test_qlora import load_4bit
    from tests.io.checkpoint.test_fourbit import bnb_dequantize

    q = load_4bit(EX / "tiny-base", "nf4")
    model = AutoModelForCausalLM.from_pretrained(str(EX / "tiny-base"), dtype=torch.float32)
    n = 0
    with torch.no_grad():
        for name, m in q.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                model.get_submodule(name).weight.copy_(bnb_dequantize(m.weight.data, m.weight.quant_state))
                n += 1
    assert n == 4 * 7  # every Linear of the 4 decoder layers (lm_head stays float)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def test_qlora_and_4bit_merges_match_peft_on_the_dequantized_base(work):
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", work / "held-out.jsonl",
                 "--variant", f"qlora={work / 'qlora'}", "--variant", f"plain4={work / 'plain4'}",
                 "--batch-size", "1")
    assert res.code == 0, res.stderr
    doc = res.json
    assert [v["name"] for v in doc["variants"]] == ["base", "qlora", "plain4"]
    oracle_model = dequantized_peft(EX / "upper-lora")
    expected = oracle(_peft_model(EX / "upper-lora"), {"qlora": oracle_model, "plain4": oracle_model},
                      _texts(work / "held-out.jsonl"))
    _compare(doc, expected)
    rows = {v["name"]: v for v in doc["variants"]}
    # 4 bits cost something, far less than dropping the adapter
    assert 0 < rows["qlora"]["kl_mean"] < rows["base"]["kl_mean"] / 10
