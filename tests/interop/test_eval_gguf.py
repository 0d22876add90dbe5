"""eval's GGUF variants against llama.cpp's own ``llama-perplexity --kl-divergence``.

The reference's log-probabilities (PEFT + transformers, float32: the oracle eval's reference is
proven equal to) are written in llama-perplexity's ``--kl-divergence-base`` format
(tools/perplexity/perplexity.cpp: ``_logits_``, n_ctx, n_vocab, n_chunk, the tokens, then per scored
position two floats, scale and the smallest log-probability, and n_vocab uint16 steps; only the
second half of each n_ctx chunk is scored). llama-perplexity then runs each GGUF variant on those
tokens and prints its KL mean, percentiles, same-top-p and perplexity; ``adapterctl eval`` scores the
same tokens and positions (one JSONL prompt + completion per chunk, the completion being the chunk's
scored half) with llama.cpp's llama-results, and both must agree: the bundled example's upper-lora as
GGUF f16 and q8_0 on the f32 base GGUF, and the merged model as a q8_0 GGUF, converted by llama.cpp
from our safetensors merge and written by ``merge --to gguf`` itself."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.helpers import REPO, invoke
from tests.interop.gguf_harness import llama_cpp_dir, run_converters, run_llama

EX = REPO / "examples"
N_CTX = 48  # llama-perplexity's chunk: positions N_CTX/2 .. N_CTX-2 are scored
FIRST = N_CTX // 2


def _chunks(tokenizer) -> list[list[int]]:
    """Held-out stories of at least N_CTX tokens, cut to N_CTX, whose halves tokenize back to the same
    ids as a prompt and a completion (so eval's JSONL records are exactly llama.cpp's chunks)."""
    out = []
    for line in (EX / "held-out.txt").read_text().splitlines():
        ids = tokenizer(line)["input_ids"][:N_CTX]
        if len(ids) < N_CTX:
            continue
        prompt, done = _halves(tokenizer, ids)
        if tokenizer(prompt)["input_ids"] + tokenizer(done, add_special_tokens=False)["input_ids"] == ids:
            out.append(ids)
    return out


def _halves(tokenizer, ids):
    dec = lambda x: tokenizer.decode(x, clean_up_tokenization_spaces=False)  # noqa: E731
    return dec(ids[: FIRST + 1]), dec(ids[FIRST + 1 :])


def _quantized(logits: np.ndarray) -> np.ndarray:
    """One position's log-probabilities as llama-perplexity stores them (log_softmax with a uint16
    output in perplexity.cpp): [scale, min_log_prob] as floats, then a step per token above
    max - 16; padded to 2*((n_vocab+1)/2) + 4 uint16."""
    logits = logits.astype(np.float32)
    mx, mn = logits.max(), max(logits.min(), logits.max() - 16)
    lse = np.float32(np.log(np.exp((logits - mx).astype(np.float64)).sum()))
    scale = np.float32((mx - mn) / 65535.0)
    steps = np.where(logits > mn, np.rint((logits - mn) / scale), 0).astype(np.uint16)
    head = np.array([scale, mn - mx - lse], dtype=np.float32).view(np.uint16)
    nv = 2 * ((len(logits) + 1) // 2) + 4
    return np.concatenate([head, steps, np.zeros(nv - 4 - len(logits), np.uint16)])


def _write_base_file(path, chunks, ref_logits):
    n_vocab = ref_logits.shape[-1]
    with path.open("wb") as f:
        f.write(b"_logits_")
        f.write(np.array([N_CTX], np.uint32).tobytes() + np.array([n_vocab, len(chunks)], np.int32).tobytes())
        f.write(np.array(chunks, np.int32).tobytes())
        for c in range(len(chunks)):
            for pos in range(FIRST, N_CTX - 1):
                f.write(_quantized(ref_logits[c, pos]).tobytes())


def _llama_kld(model, lora, base_file) -> dict:
    exe = llama_cpp_dir() / "build/bin/llama-perplexity"
    cmd = [str(exe), "-m", str(model), "--kl-divergence", "--kl-divergence-base", str(base_file),
           "-c", str(N_CTX), "-b", str(N_CTX)] + (["--lora", str(lora)] if lora else [])
    labels = {"kl_mean": "Mean    KLD:", "kl_max": "Maximum KLD:", "kl_p99": "99.0%   KLD:",
              "perplexity": "Mean PPL(Q)", "top1": "Same top p:"}
    # the end of a run's output can be lost on a busy machine (gguf_harness.run_llama), and the
    # statistics are the end. Runs are deterministic (same files, same threads), so each figure is
    # taken from whichever run printed it
    found: dict[str, re.Match] = {}
    for _ in range(20):
        proc = run_llama(cmd, timeout=600)
        text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        assert proc.returncode == 0, text[-3000:]
        for k, v in labels.items():
            m = re.search(re.escape(v) + r"\s*:?\s*(-?[0-9.]+)", text)
            if m and k not in found:
                found[k] = m
        if len(found) == len(labels):
            break
    assert len(found) == len(labels), (sorted(set(labels) - set(found)), text[-3000:])
    out = {k: float(m.group(1)) for k, m in found.items()}
    return {**out, "top1": out["top1"] / 100}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval-gguf")
    merged = root / "merged"
    assert invoke("merge", EX / "tiny-base", EX / "upper-lora", "--output", merged).code == 0
    errors = run_converters([
        ("convert_hf_to_gguf.py", [EX / "tiny-base", "--outfile", root / "base.gguf", "--outtype", "f32"]),
        ("convert_hf_to_gguf.py", [merged, "--outfile", root / "merged-q8_0.gguf", "--outtype", "q8_0"]),
    ], root / "work")
    assert errors == [None, None], errors
    res = invoke("merge", EX / "tiny-base", EX / "upper-lora", "--output", root / "ours-q8_0.gguf",
                 "--to", "gguf", "--outtype", "q8_0")
    assert res.code == 0, res.stderr
    for t in ("f16", "q8_0"):
        res = invoke("convert", EX / "upper-lora", root / f"upper-{t}.gguf", "--to", "gguf", "--outtype", t)
        assert res.code == 0, res.stderr
    tokenizer = AutoTokenizer.from_pretrained(str(EX / "tiny-base"))
    chunks = _chunks(tokenizer)
    assert len(chunks) * (N_CTX - 1 - FIRST) >= 100  # llama-perplexity prints statistics from 100
    model = AutoModelForCausalLM.from_pretrained(str(EX / "tiny-base"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(EX / "upper-lora")).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(chunks)).logits.numpy()
    _write_base_file(root / "ref.kld", chunks, ref)
    data = root / "chunks.jsonl"
    data.write_text("".join(json.dumps(dict(zip(("prompt", "completion"), _halves(tokenizer, c)))) + "\n"
                            for c in chunks))
    return root, data, len(chunks)


def test_gguf_variants_agree_with_llama_perplexity_kl_divergence(world):
    root, data, n = world
    variants = {"f16": ("base.gguf", "upper-f16.gguf"), "q8_0": ("base.gguf", "upper-q8_0.gguf"),
                "merged-q8_0": ("merged-q8_0.gguf", None), "ours-q8_0": ("ours-q8_0.gguf", None)}
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--gguf-base", root / "base.gguf", "--llama-cpp", llama_cpp_dir(),
                 *[a for name, (m, lora) in variants.items()
                   for a in ("--variant", f"{name}={root / (lora or m)}")])
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["positions"] == n * (N_CTX - 1 - FIRST)
    rows = {v["name"]: v for v in doc["variants"]}
    for name, (m, lora) in variants.items():
        ours, theirs = rows[name], _llama_kld(root / m, root / lora if lora else None, root / "ref.kld")
        assert ours["kind"] == "gguf"
        # the variant's own figures come from llama.cpp's float logits alone: to its printed digits
        assert ours["perplexity"] == pytest.approx(theirs["perplexity"], abs=1.5e-6), (name, ours, theirs)
        assert ours["top1_agreement"] == pytest.approx(theirs["top1"], abs=1.5e-5), (name, ours, theirs)
        # KL: llama.cpp prints 6 decimals and keeps the reference's log-probabilities in 16-bit steps
        # of (max - min)/65535 (about 2.4e-4 nats here), which puts a floor of about 1e-6 under its mean
        # and up to about 1e-4 under one position's KL; above that floor the figures agree
        assert ours["kl_mean"] == pytest.approx(theirs["kl_mean"], rel=0.02, abs=1.5e-6), (name, ours, theirs)
        for key in ("kl_p99", "kl_max"):
            if theirs[key] >= 1e-4:
                assert ours[key] == pytest.approx(theirs[key], rel=0.05), (name, key, ours, theirs)
            else:
                assert ours[key] <= theirs[key], (name, key, ours, theirs)
    # what each costs, in order: the LoRA in f16 < in q8_0 < the whole model in q8_0 < no adapter at all
    kl = [rows[k]["kl_mean"] for k in ("f16", "q8_0", "merged-q8_0", "base")]
    assert kl == sorted(kl) and kl[0] > 0
    # merge --to gguf writes llama.cpp's own q8_0 blocks of the same merged weights
    assert rows["ours-q8_0"]["kl_mean"] == pytest.approx(rows["merged-q8_0"]["kl_mean"], rel=1e-6)


def test_tokenization_that_llama_cpp_does_not_reproduce_is_refused(world, tmp_path):
    """A plain text cut into --ctx windows: a window decoded to text is not the same tokens to
    llama.cpp (it starts mid-word), so eval refuses rather than compare logits of other tokens."""
    root, _, _ = world
    text = tmp_path / "stories.txt"
    text.write_text((EX / "held-out.txt").read_text())
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", text, "--ctx", "37",
                 "--gguf-base", root / "base.gguf", "--llama-cpp", llama_cpp_dir(),
                 "--variant", f"g={root / 'upper-f16.gguf'}")
    assert res.code == 6, res.stdout + res.stderr
    err = res.json["error"]
    assert "variant 'g'" in err["message"] and "tokenizes" in err["message"] and "JSONL" in err["hint"]
