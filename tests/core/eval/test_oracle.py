"""eval's figures against an independent computation: PEFT + transformers in float32, one sequence
at a time, teacher-forced, KL / top-1 / perplexity written out here (not eval's code). The
variants are real outputs of adapterctl on the bundled example: a bf16 merge, a rank-reduced
adapter, DoRA -> LoRA at the adapter's rank (convert --for vllm), and a different adapter."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.helpers import REPO, invoke

EX = REPO / "examples"
REL = 1e-4


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Held-out stories (the example's corpus generator, another seed) and the variants."""
    import sys

    sys.path.insert(0, str(EX))
    from corpus import corpus

    root = tmp_path_factory.mktemp("eval")
    data = root / "held-out.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(4321, 12)))
    steps = {
        "merged": ("merge", EX / "tiny-base", EX / "upper-lora", "--output", root / "merged", "--dtype", "bfloat16"),
        "r4": ("convert", EX / "upper-lora", root / "r4", "--rank", "4"),
        "dora-lora": ("convert", EX / "dragon-dora", root / "dora-lora", "--for", "vllm", "--base", EX / "tiny-base"),
    }
    for name, args in steps.items():
        res = invoke("-q", *args)
        assert res.code == 0, (name, res.stderr)
    return root


def _texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def _peft_model(adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(EX / "tiny-base"), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def _plain_model(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def oracle(reference, variants: dict, texts: list[str]) -> dict:
    """name -> (kl_mean, kl_p99, kl_max, top1, ppl) and the reference's perplexity, computed
    sequence by sequence in float64 from each model's float32 logits."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(EX / "tiny-base"))
    kls = {n: [] for n in variants}
    agree = {n: [] for n in variants}
    nll = {n: [] for n in ["reference", *variants]}
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            target = ids[0, 1:]
            p = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].double(), -1)
            nll["reference"] += (-p[torch.arange(len(target)), target]).tolist()
            for name, model in variants.items():
                q = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                kls[name] += (p.exp() * (p - q)).sum(-1).tolist()
                agree[name] += (p.argmax(-1) == q.argmax(-1)).tolist()
                nll[name] += (-q[torch.arange(len(target)), target]).tolist()
    out = {"reference_perplexity": math.exp(np.mean(nll["reference"]))}
    for name in variants:
        k = np.array(kls[name])
        out[name] = dict(kl_mean=k.mean(), kl_p99=np.percentile(k, 99), kl_max=k.max(),
                         top1_agreement=np.mean(agree[name]), perplexity=math.exp(np.mean(nll[name])))
    return out


def _compare(doc, expected, rel_tail=REL):
    """Every figure to ``REL``; the p99 and max (one position each) to ``rel_tail``: a padded batch
    rounds differently from one sequence alone, and a single position's KL shows it."""
    assert doc["reference_perplexity"] == pytest.approx(expected["reference_perplexity"], rel=REL)
    rows = {v["name"]: v for v in doc["variants"]}
    for name, figures in expected.items():
        if name == "reference_perplexity":
            continue
        for key, value in figures.items():
            rel = rel_tail if key in ("kl_p99", "kl_max") else REL
            assert rows[name][key] == pytest.approx(value, rel=rel, abs=1e-9), (name, key)
        assert rows[name]["positions"] == doc["positions"]


def test_upper_lora_variants_match_peft(work):
    """Reference upper-lora; variants: its bf16 merge (loaded in float32), its rank-4 reduction,
    and another adapter (dragon-dora); the base row. One sequence per batch, as the oracle runs."""
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", work / "held-out.jsonl",
                 "--variant", f"merged={work / 'merged'}", "--variant", f"r4={work / 'r4'}",
                 "--variant", f"dragon={EX / 'dragon-dora'}", "--batch-size", "1")
    assert res.code == 0, res.stderr
    doc = res.json
    assert [v["name"] for v in doc["variants"]] == ["base", "merged", "r4", "dragon"]
    assert [v["kind"] for v in doc["variants"]] == ["base", "model", "adapter", "adapter"]
    texts = _texts(work / "held-out.jsonl")
    expected = oracle(_peft_model(EX / "upper-lora"), {
        "base": _plain_model(EX / "tiny-base"), "merged": _plain_model(work / "merged"),
        "r4": _peft_model(work / "r4"), "dragon": _peft_model(EX / "dragon-dora"),
    }, texts)
    _compare(doc, expected)
    rows = {v["name"]: v for v in doc["variants"]}
    # the figures say something: the merge is far closer than the rank-4 copy, which is closer than the base
    assert rows["merged"]["kl_mean"] < rows["r4"]["kl_mean"] < rows["base"]["kl_mean"]


def test_dora_to_lora_matches_peft(work):
    """Reference dragon-dora (DoRA, rsLoRA); variant: the plain LoRA `convert --for vllm` wrote at
    the adapter's own rank (truncated SVD of the exact DoRA weight minus the base). Batched (four
    sequences per forward, right-padded)."""
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "dragon-dora", "--data", work / "held-out.jsonl",
                 "--variant", f"lora={work / 'dora-lora'}", "--batch-size", "4")
    assert res.code == 0, res.stderr
    expected = oracle(_peft_model(EX / "dragon-dora"), {"lora": _peft_model(work / "dora-lora")},
                      _texts(work / "held-out.jsonl"))
    _compare(res.json, expected, rel_tail=1e-3)  # batched: padded rows
    assert res.json["variants"][1]["kl_mean"] > 0
