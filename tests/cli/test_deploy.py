"""``deploy``, ``undeploy`` and ``ls`` through the real CLI against the scripted stub with vLLM's
runtime LoRA routes (tests/openai_stub.py ``RuntimeLora``): what is sent (checked, converted and
staged adapters; never a refused one), names already taken (``--replace``), a rank over the
server's ``max_lora_rank``, a server that is down, 4xx/5xx on load, a server without runtime
loading, a failed verify (unloaded again, or kept), and ``ls``'s "deployed from". The real vLLM
server is in tests/interop/test_deploy_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_peft_adapter
from tests.helpers import REPO, invoke
from tests.openai_stub import Reply, RuntimeLora, Stub, completion, free_port

BASE = "examples/tiny-base"
UPPER = "examples/upper-lora"
DORA = "examples/dragon-dora"
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


@pytest.fixture
def server(stub):
    return RuntimeLora(stub, str((REPO / BASE).resolve()))


def deploy(stub, stage, *args):
    return invoke("--json", "deploy", "--endpoint", stub.url, "--stage", str(stage), *args)


def loads(stub):
    return [r["body"] for r in stub.posts(LOAD)]


def test_deploy_converts_stages_loads_and_records(stub, server, tmp_path):
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--lora", f"dragon={DORA}", "--no-verify")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["server_version"] == "0.32.0" and doc["verify"] is None
    upper, dragon = doc["adapters"]
    assert (upper["verdict"], upper["converted"]) == ("serves", False)
    assert (dragon["verdict"], dragon["converted"]) == ("refuses", True)  # DoRA: vLLM refuses it
    # what the server was told to load: copies in the stage folder, DoRA as an exact LoRA
    sent = {b["lora_name"]: Path(b["lora_path"]) for b in loads(stub)}
    assert set(sent) == {"upper", "dragon"} and all(p.parent == tmp_path.resolve() for p in sent.values())
    assert json.loads((sent["dragon"] / "adapter_config.json").read_text())["use_dora"] is False
    assert (sent["upper"] / "adapter_model.safetensors").read_bytes() == (
        REPO / UPPER / "adapter_model.safetensors"
    ).read_bytes()
    assert server.loaded == {k: str(v) for k, v in sent.items()}
    state = json.loads((tmp_path / "deployments.json").read_text())
    assert state[stub.url + "/v1"]["upper"]["adapter"] == UPPER

    ls = invoke("--json", "ls", "--endpoint", stub.url, "--stage", str(tmp_path))
    assert ls.code == 0
    rows = {m["name"]: m for m in ls.json["models"]}
    assert rows["dragon"]["adapter"] == DORA and rows["dragon"]["parent"] == server.base
    assert rows[server.base]["parent"] is None

    un = invoke("--json", "undeploy", "--endpoint", stub.url, "--stage", str(tmp_path), "dragon")
    assert un.code == 0 and un.json["unloaded"] == ["dragon"]
    assert set(server.loaded) == {"upper"}
    assert "dragon" not in json.loads((tmp_path / "deployments.json").read_text())[stub.url + "/v1"]


def test_a_taken_name_is_refused_unless_replace(stub, server, tmp_path):
    server.loaded["upper"] = "/srv/old-upper"
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--no-verify")
    assert res.code == 2 and "already serves an adapter named 'upper'" in res.json["error"]["message"]
    assert "--replace" in res.json["error"]["hint"] and loads(stub) == []
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--no-verify", "--replace")
    assert res.code == 0, res.stdout
    assert [r["path"] for r in stub.requests if r["method"] == "POST"] == [UNLOAD, LOAD]
    assert res.json["adapters"][0]["replaced"] and server.loaded["upper"] != "/srv/old-upper"


def test_rank_over_the_servers_max_unloads_what_was_loaded(stub, server, tmp_path):
    server.max_lora_rank = 64  # the DoRA adapter as exact LoRA has rank 192
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--lora", f"dragon={DORA}", "--no-verify")
    assert res.code == 5, res.stdout
    err = res.json["error"]
    assert "rank 192" in err["message"] and "max_lora_rank (64)" in err["message"]
    assert "--max-lora-rank 192" in err["hint"]
    assert server.loaded == {}  # upper was loaded first, then unloaded again
    assert [b["lora_name"] for b in (r["body"] for r in stub.posts(UNLOAD))] == ["upper"]


def test_a_refused_adapter_is_never_sent(stub, server, tmp_path):
    bad = make_peft_adapter(REPO / BASE, tmp_path / "biased", r=4, lora_alpha=8, lora_bias=True,
                            target_modules=["q_proj"])
    res = deploy(stub, tmp_path / "stage", "--lora", f"upper={UPPER}", "--lora", f"b={bad}", "--no-verify")
    assert res.code == 5 and "vllm refuses" in res.json["error"]["message"]
    assert loads(stub) == []


def test_server_down(tmp_path):
    res = invoke("--json", "deploy", "--endpoint", f"http://127.0.0.1:{free_port()}",
                 "--stage", str(tmp_path), "--lora", f"upper={UPPER}")
    assert res.code == 8 and "connection refused" in res.json["error"]["message"]


@pytest.mark.parametrize("status", [400, 500, 503])
def test_an_error_on_load_leaves_nothing_loaded(stub, server, tmp_path, status):
    stub.add(LOAD, Reply(200, "Success"), Reply(status, {"error": {"message": "boom"}}))
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--lora", f"dragon={DORA}", "--no-verify")
    assert res.code == 8 and "boom" in res.json["error"]["message"]
    assert len(loads(stub)) == 2  # not retried: a load may have half-happened
    assert [r["body"]["lora_name"] for r in stub.posts(UNLOAD)] == ["upper"]


def test_a_server_without_runtime_loading(stub, tmp_path):
    RuntimeLora(stub, str((REPO / BASE).resolve()))
    del stub.routes[LOAD]  # vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING: no such route
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--no-verify")
    assert res.code == 8 and "--allow-runtime-lora" in res.json["error"]["hint"]


def test_a_failed_verify_unloads_unless_keep_on_failure(stub, server, tmp_path):
    stub.default["/v1/completions"] = Reply(200, completion(" zz", [7, 7, 7, 7]))
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}")
    assert res.code == 10, res.stdout + res.stderr
    assert "upper differs" in res.json["error"]["message"] and server.loaded == {}
    assert res.json["verify"]["results"][0]["verdict"] == "differs"
    res = deploy(stub, tmp_path, "--lora", f"upper={UPPER}", "--keep-on-failure")
    assert res.code == 10 and set(server.loaded) == {"upper"}


def test_llama_cpp_and_unknown_names(stub, server, tmp_path):
    res = deploy(stub, tmp_path, "--engine", "llama.cpp", "--lora", f"upper={UPPER}")
    assert res.code == 5 and "/lora-adapters" in res.json["error"]["message"]
    res = invoke("--json", "undeploy", "--endpoint", stub.url, "--stage", str(tmp_path), "nope")
    assert res.code == 3 and "no adapter named 'nope'" in res.json["error"]["message"]
    res = deploy(stub, tmp_path, "--lora", f"{server.base}={UPPER}")
    assert res.code == 2
