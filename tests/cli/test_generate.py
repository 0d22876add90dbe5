"""``adapterctl generate`` end to end: JSON / JSONL shapes, compare, stdin, PEFT-equal tokens, a
test per refusal, and Ctrl-C (a real SIGINT to a subprocess) exiting 130 with partial output."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.core.generate.test_loop import one_thread, peft_greedy, peft_model  # noqa: F401 (one_thread: an autouse fixture)
from tests.helpers import REPO, invoke

COMPLETION_KEYS = {"id", "prompt", "adapter", "completion", "completion_token_ids", "finish_reason",
                   "prompt_tokens", "completion_tokens", "tokens_per_second"}


@pytest.fixture(scope="module")
def loras(peft_adapter):
    return [peft_adapter("llama", seed=i, r=4, target_modules="all-linear") for i in range(2)]


def test_json_document_matches_peft(tiny_models, loras):
    res = invoke("--json", "generate", tiny_models["llama"], "--adapter", loras[0], "-p", "a small",
                 "-p", "the quick brown fox", "-n", "5", "--logprobs")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["ok"] is True and doc["mode"] == "folded" and doc["interrupted"] is False
    assert doc["adapters"][0]["source"] == str(loras[0]) and doc["adapters"][0]["weight"] == 1.0
    assert {"base", "seed", "elapsed_s", "tokens_per_second", "warnings"} <= set(doc)
    pm, tok = peft_model(tiny_models["llama"], {"a": loras[0]})
    for c, prompt in zip(doc["completions"], ["a small", "the quick brown fox"]):
        assert set(c) == COMPLETION_KEYS | {"logprobs"} and c["prompt"] == prompt
        assert c["adapter"] == loras[0].name and c["finish_reason"] in ("eos", "length")
        tokens, logprobs = peft_greedy(pm, tok, prompt, n=5)
        assert c["completion_token_ids"] == tokens and c["completion_tokens"] == len(tokens)
        assert max(abs(a - b) for a, b in zip(c["logprobs"], logprobs)) < 1e-4
        assert c["completion"] == tok.decode(tokens, skip_special_tokens=True)


def test_jsonl_mixed_adapters_equal_separate_runs(tiny_models, loras, tmp_path):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "a small", "adapter": str(loras[0]), "id": "x"},
            {"prompt": "a small", "adapter": str(loras[1])},
            {"prompt": "low rank", "adapter": None, "max_new_tokens": 2},
            {"prompt": "low rank"}]  # no 'adapter': the --adapter option
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = invoke("generate", tiny_models["llama"], "--adapter", loras[0], "--prompts", prompts,
                 "--jsonl", "-n", "6")
    assert res.code == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(c["id"] for c in lines) == ["1", "2", "3", "x"]
    got = {c["id"]: c for c in lines}
    assert [got[i]["adapter"] for i in ("x", "1", "2", "3")] == [loras[0].name, loras[1].name, None,
                                                                 loras[0].name]
    assert "adapters: mixed" in res.stderr
    for key, adapter in (("1", loras[1]), ("x", loras[0])):
        alone = invoke("--json", "generate", tiny_models["llama"], "--adapter", adapter, "-p",
                       "a small", "-n", "6").json["completions"][0]
        assert got[key]["completion_token_ids"] == alone["completion_token_ids"]
    base = invoke("--json", "generate", tiny_models["llama"], "-p", "low rank", "-n", "2").json
    assert got["2"]["completion_token_ids"] == base["completions"][0]["completion_token_ids"]


def test_compare_json_and_table(tiny_models, loras):
    args = ["generate", "--adapter", loras[0], "--adapter", f"{loras[1]}=0.5", "--compare",
            "-p", "a small", "-p", "low rank", "-n", "3"]
    doc = invoke("--json", *args).json  # BASE from the adapter's base_model_name_or_path
    assert doc["base"] == str(tiny_models["llama"]) and doc["mode"] == ["base", "folded", "folded"]
    assert [r["id"] for r in doc["compare"]] == ["0", "1"]
    assert [c["adapter"] for c in doc["compare"][0]["completions"]] == [
        None, loras[0].name, f"{loras[1].name}=0.5"]
    assert len(doc["completions"]) == 6
    human = invoke(*args)
    assert human.code == 0 and "prompt" in human.stdout and loras[0].name in human.stdout
    assert "a small" in human.stdout and "base" in human.stdout
    chat = invoke("generate", "--adapter", loras[0], "--compare", "-p", "[INST] hi [/INST]", "-n", "2")
    assert chat.code == 0 and "[INST] hi [/INST]" in chat.stdout  # user text, not Rich markup


def test_stdin_and_plain_output(tiny_models, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a small\nlow rank\n"))
    doc = invoke("--json", "generate", tiny_models["llama_tied"], "-", "-n", "3").json
    assert [c["prompt"] for c in doc["completions"]] == ["a small", "low rank"]
    assert doc["completions"][0]["completion"] == " small small small"
    one = invoke("generate", tiny_models["llama_tied"], "-p", "a small", "-n", "3", "--stop", "all s")
    assert one.code == 0 and one.stdout == " sm\n"
    several = invoke("generate", tiny_models["llama_tied"], "-p", "a small", "-p", "low", "-n", "2")
    assert several.code == 0 and "a small small small" in several.stdout


def test_sampling_seed_reproduces_through_the_cli(tiny_models):
    args = ["--json", "generate", tiny_models["llama"], "-p", "a small", "-n", "8",
            "--temperature", "1.2", "--top-p", "0.9", "--seed", "5"]
    a, b = invoke(*args).json, invoke(*args).json
    assert a["seed"] == 5 and a["completions"][0]["completion_token_ids"] == \
        b["completions"][0]["completion_token_ids"]


def test_wrong_base_adapter_is_refused(tiny_models, peft_adapter):
    gpt2_lora = peft_adapter("gpt2", r=4, target_modules=["c_attn"])
    res = invoke("--json", "generate", tiny_models["llama"], "--adapter", gpt2_lora, "-p", "x")
    assert res.code == 6 and res.json["error"]["type"] == "incompatible_base"
    assert "none of its" in res.json["error"]["message"]  # attach's early check, from the headers
    assert "loading base" not in res.stderr  # before the base's weights load


def test_missing_tokenizer(tiny_models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_models["llama"] / name).exists():
            shutil.copy(tiny_models["llama"] / name, bare / name)
    res = invoke("generate", bare, "-p", "x")
    assert res.code == 3 and "has no tokenizer" in res.stderr and "hint" in res.stderr


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "no prompts given"),
    (["-p", "x", "--jsonl", "--json"], 2, "--json and --jsonl cannot be combined"),
    (["-p", "x", "--system", "be brief"], 2, "--system needs --chat"),
    (["-p", "x", "--chat"], 2, "the tokenizer has no chat template"),
    (["-p", "x", "--compare"], 2, "--compare needs at least one --adapter"),
    (["-p", "x", "-n", "0"], 2, "--max-new-tokens must be at least 1"),
    (["-p", "x", "--top-p", "1.5"], 2, "--top-p must be in"),
    (["-p", "x", "--batch-size", "0"], 2, "--batch-size must be at least 1"),
    (["-p", "x", "extra"], 2, "unexpected arguments: extra"),
    (["-p", " ".join(["fox"] * 140)], 2, "prompt '0' is 14\\d tokens but the model's context is 128"),
    (["-p", "x", "--dtype", "int3"], 2, "--dtype 'int3'"),
])
def test_refusals(tiny_models, args, code, message):
    res = invoke("generate", tiny_models["llama"], *args)
    assert res.code == code, res.stderr
    shown = (res.stdout + res.stderr).replace("\n", " ")  # --json puts the error on stdout
    assert re.search(message, shown), shown


def test_refusals_about_adapters_and_prompt_files(tiny_models, tmp_path):
    res = invoke("generate", "-p", "x")
    assert res.code == 2 and "no base model given" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "adapter": "./nowhere"}\n')
    res = invoke("--json", "generate", tiny_models["llama"], "--prompts", bad)
    assert res.code == 3 and "nowhere" in res.json["error"]["message"]
    bad.write_text('{"prompt": "x"\n')
    res = invoke("generate", tiny_models["llama"], "--prompts", bad)
    assert res.code == 4 and "bad.jsonl:1" in res.stderr


def test_ctrl_c_prints_what_was_made_and_exits_130(tiny_models, tmp_path):
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(200)) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "adapterctl", "generate", str(tiny_models["llama"]), "--prompts",
           str(prompts), "--jsonl", "-b", "1", "-n", "100"]
    # SIGINT as a terminal's foreground command gets it: a test run started as a background job of a
    # non-interactive shell (`.ci/run &`) ignores SIGINT, and its children would inherit that
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    first = proc.stdout.readline()  # generation is under way
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    lines = [json.loads(line) for line in (first + rest).splitlines()]
    assert proc.returncode == 130, err
    assert 1 <= len(lines) < 200 and "interrupted" in err
    assert lines[-1]["finish_reason"] in ("interrupted", "eos", "length")
    assert all(set(c) == COMPLETION_KEYS for c in lines)


def test_one_prompt_streams_in_a_terminal(tiny_models):
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adapterctl", "generate",
                             str(tiny_models["llama_tied"]), "-p", "a small", "-n", "4"],
                            stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 1024)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    assert proc.returncode == 0
    assert b"".join(chunks).replace(b"\r\n", b"\n") == b" small small small small\n"
