"""``generate --endpoint`` faults through the real CLI against a scripted local stub (127.0.0.1):
429/503 then success, connection refused, timeout, malformed bodies, a failure mid-run (partial
JSONL kept), unknown adapters, the API key never printed; and ``--engine vllm`` without vLLM
installed (this virtualenv has none). Completions compared with a model are in tests/interop."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli
from tests.openai_stub import Reply, Stub, completion, free_port, models

CMPL = "/v1/completions"
KEY = "sk-test-abcdef123456"


@pytest.fixture
def stub():
    s = Stub()
    s.default["/v1/models"] = Reply(200, models("tiny", {"upper": "/srv/upper"}))
    yield s
    s.close()


def gen(stub_url, *args, env=None):
    return run_cli("generate", "--endpoint", stub_url, *args, env=env, timeout=120)


def no_traceback(res):
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout


def test_429_then_503_then_success(stub):
    stub.add(CMPL, Reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}),
             Reply(503, "overloaded"), Reply(200, completion(" HI", [5, 6], "length")))
    res = gen(stub.url, "-a", "upper", "-p", "x", "-n", "2", "--json")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["ok"] and doc["mode"] == "endpoint" and doc["base"] == "tiny"
    c = doc["completions"][0]
    assert (c["completion"], c["completion_token_ids"], c["adapter"]) == (" HI", [5, 6], "upper")
    assert len(stub.posts()) == 3


def test_connection_refused():
    res = gen(f"http://127.0.0.1:{free_port()}", "-p", "x")
    assert res.code == 8 and "connection refused" in res.stderr
    no_traceback(res)


def test_connection_refused_json():
    res = gen(f"http://127.0.0.1:{free_port()}", "-p", "x", "--json")
    assert res.code == 8
    assert res.json["error"]["type"] == "endpoint" and res.json["ok"] is False


def test_timeout(stub):
    stub.add(CMPL, Reply(200, completion("late", [1]), delay=3))
    res = gen(stub.url, "-p", "x", "--timeout", "0.5")
    assert res.code == 8 and "no answer within 0.5s (prompt '0')" in res.stderr
    no_traceback(res)


@pytest.mark.parametrize("body, words", [(b"<html>502 Bad Gateway</html>", "not JSON"),
                                         ({"choices": [{"nope": 1}]}, "no completion text")])
def test_malformed_body(stub, body, words):
    stub.add(CMPL, Reply(200, body))
    res = gen(stub.url, "-p", "x")
    assert res.code == 8 and "malformed response" in res.stderr and words in res.stderr
    no_traceback(res)


def test_failure_mid_run_keeps_partial_jsonl(stub, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"r{i}", "prompt": f"p{i}"}) for i in range(4)))
    stub.add(CMPL, Reply(200, completion(" one", [1])), Reply(200, completion(" two", [2])),
             Reply(500, "boom"), Reply(500, "boom"), Reply(500, "boom"), Reply(500, "boom"),
             Reply(500, "boom"))
    res = gen(stub.url, "--prompts", str(prompts), "--jsonl", "--concurrency", "1")
    assert res.code == 8, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["id"] for x in lines] == ["r0", "r1"]
    assert "server error 500 after 5 tries (prompt 'r2')" in res.stderr
    assert len(stub.posts()) == 7  # r3 was never sent
    no_traceback(res)


def test_failure_mid_run_json_document(stub):
    stub.add(CMPL, Reply(200, completion(" one", [1])), Reply(400, {"detail": "too long"}))
    res = gen(stub.url, "-p", "a", "-p", "b", "-p", "c", "--json", "--concurrency", "1")
    assert res.code == 8
    doc = res.json
    assert doc["ok"] is False and "too long" in doc["error"]["message"]
    assert [c["id"] for c in doc["completions"]] == ["0"]


def test_unknown_adapter_is_refused_before_any_prompt(stub):
    res = gen(stub.url, "-a", "lower", "-p", "x")
    assert res.code == 3 and "serves no adapter named 'lower'; its adapters: upper" in res.stderr
    assert stub.posts() == []


def test_api_key_sent_never_printed(stub):
    stub.add(CMPL, Reply(401, {"error": {"message": f"bad key {KEY}"}}))
    for args, env in ((["--api-key", KEY], None), ([], {"ADAPTERCTL_API_KEY": KEY})):
        stub.add(CMPL, Reply(401, {"error": {"message": f"bad key {KEY}"}}))
        res = gen(stub.url, "-p", "x", "--json", *args, env=env)
        assert res.code == 8
        assert KEY not in res.stdout and KEY not in res.stderr and "***" in res.stdout
        assert stub.posts()[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    res = run_cli("generate", "--help", env={"ADAPTERCTL_API_KEY": KEY})
    assert res.code == 0 and KEY not in res.stdout


def test_weighted_combinations_are_refused(stub):
    res = gen(stub.url, "-a", "upper", "-a", "other", "-p", "x")
    assert res.code == 2 and "one adapter per request" in res.stderr
    res = gen(stub.url, "-a", "upper=0.5", "-p", "x")
    assert res.code == 2 and "weight 1 only" in res.stderr


@pytest.mark.parametrize("args, words", [
    (["--engine", "vllm"], "--endpoint and --engine vllm cannot be combined"),
    (["--quantize", "nf4"], "--quantize does not apply with --endpoint"),
    (["--dtype", "float32"], "--dtype does not apply with --endpoint"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size does not apply without --engine vllm"),
])
def test_options_of_other_engines_are_refused(stub, args, words):
    res = gen(stub.url, "-p", "x", *args)
    assert res.code == 2 and words in res.stderr


def test_model_needs_an_endpoint():
    res = run_cli("generate", "examples/tiny-base", "-p", "x", "--model", "m")
    assert res.code == 2 and "--model does not apply without --endpoint" in res.stderr


def test_engine_vllm_without_vllm_installed():
    res = run_cli("--json", "generate", "examples/tiny-base", "-a", "examples/upper-lora", "-p",
                  "x", "--engine", "vllm")
    assert res.code == 7
    err = res.json["error"]
    assert err["type"] == "missing_dependency" and "`vllm" in err["message"]
    assert "virtualenv" in err["hint"]


def test_unknown_engine():
    res = run_cli("generate", "examples/tiny-base", "-p", "x", "--engine", "tgi")
    assert res.code == 2 and "--endpoint" in res.stderr
