"""``adapterctl eval``: the JSON shape, the gate (exit 10 naming the variant), on-policy --prompts
(the reference's greedy text is PEFT's), what is scored, and every refusal (exit code, message,
one JSON document)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, invoke

EX = REPO / "examples"
TEXTS = ["the quick brown fox jumps over the lazy dog", "merge the adapter into the base and save the result",
         "a small language model learns to write short sentences"]


@pytest.fixture(scope="module")
def setup(tiny_models, peft_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    lora = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    other = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    return {"base": tiny_models["llama"], "lora": lora, "other": other, "data": data, "root": root}


def _eval(s, *args):
    return invoke("--json", "eval", s["base"], "-a", s["lora"], *args)


def test_json_shape_and_base_row(setup):
    res = _eval(setup, "--data", setup["data"], "--variant", f"other={setup['other']}", "--variant", "self=fp32")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["ok"] and doc["passed"] and doc["mode"] == "data" and doc["sequences"] == 3
    assert doc["positions"] > 0 and doc["reference_perplexity"] > 1
    names = [v["name"] for v in doc["variants"]]
    assert names == ["base", "other", "self"]
    for v in doc["variants"]:
        assert {"name", "kl_mean", "kl_p99", "kl_max", "top1_agreement", "perplexity", "passed"} <= set(v)
    base, other, same = doc["variants"]
    assert base["passed"] is None and base["kl_mean"] > 0
    # the adapter in float32 on a second float32 base is the reference itself
    assert same["kl_max"] == pytest.approx(0, abs=1e-9) and same["top1_agreement"] == 1.0
    assert same["perplexity"] == pytest.approx(doc["reference_perplexity"], rel=1e-9)


def test_gate_names_the_variant_and_exits_10(setup):
    res = _eval(setup, "--data", setup["data"], "--variant", f"other={setup['other']}",
                "--variant", "same=float32", "--max-kl", "1e-12")
    assert res.code == 10, res.stderr
    doc = res.json
    assert not doc["ok"] and not doc["passed"] and doc["error"]["type"] == "not_served"
    assert "other" in doc["error"]["message"] and "--max-kl" in doc["error"]["message"]
    rows = {v["name"]: v for v in doc["variants"]}
    assert rows["other"]["passed"] is False and rows["same"]["passed"] is True
    assert rows["base"]["passed"] is None  # the scale: never gated
    assert len(res.stdout.strip().splitlines()) == 1  # one JSON document


def test_min_top1_gate_and_pass(setup):
    assert _eval(setup, "--data", setup["data"], "--variant", f"o={setup['other']}", "--min-top1", "1").code == 10
    res = _eval(setup, "--data", setup["data"], "--variant", f"o={setup['other']}", "--min-top1", "0", "--max-kl", "100")
    assert res.code == 0 and res.json["variants"][1]["passed"] is True


def test_prompt_completion_scores_only_the_completion(setup, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    data = setup["root"] / "pc.jsonl"
    pairs = [("the quick brown", " fox jumps over the lazy dog"), ("merge the", " adapter into the base")]
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    res = _eval(setup, "--data", data)
    assert res.code == 0, res.stderr
    assert res.json["positions"] == sum(len(tok(c, add_special_tokens=False)["input_ids"]) for _, c in pairs)


def test_plain_text_is_cut_into_ctx_windows(setup, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    text = " ".join(TEXTS * 3)
    path = setup["root"] / "plain.txt"
    path.write_text(text)
    n = len(tok(text)["input_ids"])
    res = _eval(setup, "--data", path, "--ctx", "16")
    assert res.code == 0, res.stderr
    windows = [min(16, n - s) for s in range(0, n, 16)]
    assert res.json["sequences"] == sum(w >= 2 for w in windows)
    assert res.json["positions"] == sum(w - 1 for w in windows if w >= 2)


def test_prompts_on_policy_match_peft_greedy(setup):
    """--prompts: the reference's greedy continuation is PEFT's; every variant's first divergence is
    reported per prompt (none for an exact copy)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = setup["root"] / "prompts.txt"
    prompts.write_text("the quick brown\nlow rank adapters\n")
    res = _eval(setup, "--prompts", prompts, "--max-new-tokens", "8", "--variant", f"other={setup['other']}",
                "--variant", "same=float32")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["mode"] == "prompts" and len(doc["completions"]) == 2
    tok = AutoTokenizer.from_pretrained(str(setup["base"]))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(setup["base"]), dtype=torch.float32), str(setup["lora"])
    ).eval()
    for c in doc["completions"]:
        ids = torch.tensor([tok(c["prompt"])["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert c["completion"] == tok.decode(out[0, ids.shape[1]:].tolist())
    assert doc["positions"] == sum(c["tokens"] for c in doc["completions"])
    rows = {v["name"]: v for v in doc["variants"]}
    assert [d["token"] for d in rows["same"]["first_divergence"]] == [None, None]
    assert len(rows["other"]["first_divergence"]) == 2


def test_table_output(setup):
    res = invoke("eval", setup["base"], "-a", setup["lora"], "--data", setup["data"], "--variant", "h=fp16")
    assert res.code == 0, res.stderr
    assert "KL mean" in res.stdout and "base" in res.stdout and "scale" in res.stdout


@pytest.mark.parametrize("case", ["no-data", "both", "missing", "empty", "bad-jsonl", "bad-variant",
                                  "no-such-variant", "dup", "reserved", "no-llama-cpp", "mlx", "no-adapter"])
def test_refusals(setup, case, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": 3}\n')
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "adapters.safetensors").write_bytes(b"")
    d = ["--data", setup["data"]]
    args, code, words = {
        "no-data": ([], 2, "--data"),
        "both": ([*d, "--prompts", setup["data"]], 2, "--prompts"),
        "missing": (["--data", tmp_path / "nope.txt"], 3, "nope.txt"),
        "empty": (["--data", empty], 2, "empty"),
        "bad-jsonl": (["--data", bad], 4, "bad.jsonl:2"),
        "bad-variant": ([*d, "--variant", "nospec"], 2, "NAME=SPEC"),
        "no-such-variant": ([*d, "--variant", f"x={tmp_path / 'gone'}"], 3, "variant 'x'"),
        "dup": ([*d, "--variant", "a=fp16", "--variant", "a=bf16"], 2, "'a'"),
        "reserved": ([*d, "--variant", "base=fp16"], 2, "'base'"),
        "no-llama-cpp": ([*d, "--variant", f"g={gguf}", "--llama-cpp", tmp_path], 7, "variant 'g'"),
        "mlx": ([*d, "--variant", f"m={tmp_path / 'mlx'}", "--mlx-python", tmp_path / "nope"], 7,
                "variant 'm': --mlx-python"),
        "no-adapter": (None, 2, "-a ADAPTER"),
    }[case]
    res = invoke("--json", "eval", setup["base"], *d) if args is None else _eval(setup, *args)
    assert res.code == code, (res.stdout, res.stderr)
    doc = res.json
    assert doc["ok"] is False and words in doc["error"]["message"] and "Traceback" not in res.stderr
    assert len(res.stdout.strip().splitlines()) == 1


def test_vocabulary_mismatch_names_the_variant(setup):
    res = _eval(setup, "--data", setup["data"], "--variant", f"other-model={EX / 'tiny-base'}")
    assert res.code == 6, res.stderr
    assert "variant 'other-model'" in res.json["error"]["message"] and "vocabulary" in res.json["error"]["message"]


def test_merge_and_convert_eval_print_the_figure_of_what_they_wrote(setup, tmp_path):
    """merge --eval / convert --eval: the figures of the written copy against the original, the same
    as `adapterctl eval` gives for it."""
    merged, reduced = tmp_path / "merged", tmp_path / "r2"
    m = invoke("--json", "merge", setup["base"], setup["lora"], "--output", merged, "--dtype", "bfloat16",
               "--eval", setup["data"])
    assert m.code == 0, m.stderr
    c = invoke("--json", "convert", setup["lora"], reduced, "--rank", "2", "--eval", setup["data"])
    assert c.code == 0, c.stderr
    e = _eval(setup, "--data", setup["data"], "--variant", f"m={merged}", "--variant", f"r={reduced}")
    rows = {v["name"]: v for v in e.json["variants"]}
    for doc, row in ((m.json["eval"], rows["m"]), (c.json["eval"], rows["r"])):
        assert doc["positions"] == e.json["positions"]
        for key in ("kl_mean", "kl_max", "top1_agreement", "perplexity"):
            assert doc[key] == pytest.approx(row[key], rel=1e-9), key
        assert doc["base_kl_mean"] == pytest.approx(rows["base"]["kl_mean"], rel=1e-9)
    human = invoke("merge", setup["base"], setup["lora"], "--output", tmp_path / "m2", "--eval", setup["data"])
    assert human.code == 0 and "eval on" in human.stdout and "top-1 agreement" in human.stdout


def test_eval_option_refusals(setup, tmp_path):
    res = invoke("--json", "merge", setup["base"], setup["lora"], "--dry-run", "--eval", setup["data"])
    assert res.code == 2 and "--eval" in res.json["error"]["message"]
    res = invoke("--json", "convert", setup["lora"], tmp_path / "g.gguf", "--to", "gguf", "--eval", setup["data"])
    assert res.code == 2 and "--eval" in res.json["error"]["message"]
    assert not (tmp_path / "g.gguf").exists()


def _fake_llama_cpp(folder):
    """A llama-results that must never run: the checks below refuse before llama.cpp is called."""
    tool = folder / "llama-results"
    tool.write_text("#!/bin/sh\nexit 99\n")
    tool.chmod(0o755)
    return folder


def _model_gguf(path, n_vocab):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_variant_refusals(setup, tmp_path, monkeypatch):
    """llama.cpp missing (exit 7, the hint names --llama-cpp), a GGUF LoRA without --gguf-base (2), a
    GGUF of another vocabulary (6): each names the variant, before llama.cpp runs."""
    monkeypatch.delenv("ADAPTERCTL_LLAMA_CPP", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lora_gguf = tmp_path / "lora.gguf"
    assert invoke("convert", setup["lora"], lora_gguf, "--to", "gguf", "--outtype", "f16").code == 0
    d = ["--data", setup["data"]]
    res = _eval(setup, *d, "--variant", f"g={lora_gguf}")
    assert res.code == 7 and "variant 'g'" in res.json["error"]["message"]
    assert "--llama-cpp" in res.json["error"]["hint"]
    tools = _fake_llama_cpp(tmp_path)
    res = _eval(setup, *d, "--variant", f"g={lora_gguf}", "--llama-cpp", tools)
    assert res.code == 2 and "--gguf-base" in res.json["error"]["hint"], res.json
    other = _model_gguf(tmp_path / "other.gguf", 17)
    for args in (["--variant", f"g={lora_gguf}", "--gguf-base", other], ["--variant", f"g={other}"]):
        res = _eval(setup, *d, *args, "--llama-cpp", tools)
        assert res.code == 6, res.json
        msg = res.json["error"]["message"]
        assert "variant 'g'" in msg and "vocabulary of 17" in msg and "Traceback" not in res.stderr
        assert len(res.stdout.strip().splitlines()) == 1
