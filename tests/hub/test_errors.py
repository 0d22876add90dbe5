"""Every Hub failure the issue lists: a clear message, a hint, the right exit code (3 for repo /
revision / file not found, 8 for the rest), nothing half-created, and no token in any output."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import invoke, run_cli
from tests.hub.conftest import OTHER, TOKEN


@pytest.fixture
def lora(peft_adapter, tmp_path):
    return shutil.copytree(peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"]),
                           tmp_path / "lora")


def test_repo_not_found(hub):
    res = invoke("inspect", "testuser/nope")
    assert res.code == 3
    assert "testuser/nope: no such repo" in res.stderr and "Check the id" in res.stderr


def test_private_repo_of_someone_else_is_not_found(hub, lora):
    hub.seed(f"{OTHER}/secret", lora, private=True)
    res = invoke("--json", "inspect", f"{OTHER}/secret")
    assert res.code == 3 and res.json["error"]["type"] == "not_found"
    assert "hf auth login" in res.json["error"]["hint"]


def test_revision_not_found(hub, lora):
    hub.seed("testuser/lora", lora)
    res = invoke("inspect", "testuser/lora@v9")
    assert res.code == 3 and "no revision 'v9'" in res.stderr
    res = invoke("inspect", "testuser/lora", "--revision", "v9")
    assert res.code == 3 and "no revision 'v9'" in res.stderr


def test_gated_repo(hub, lora):
    hub.seed(f"{OTHER}/gated", lora, gated=True)
    res = invoke("inspect", f"{OTHER}/gated")
    assert res.code == 8 and "gated" in res.stderr and "Request access" in res.stderr


def test_no_token(hub, lora, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 8 and "no token was found" not in res.stderr
    assert "needs a Hub token" in res.stderr and "hf auth login" in res.stderr
    assert hub.state.requests == []


def test_bad_token(hub, lora):
    res = invoke("push", lora, "testuser/lora", "--token", "hf_wrong")
    assert res.code == 8 and "refused the token" in res.stderr and "hf auth login" in res.stderr
    assert "testuser/lora" not in hub.state.repos
    res = invoke("inspect", "testuser/lora", "--token", "hf_wrong")
    assert res.code == 8 and "refused the token" in res.stderr


def test_network_down(hub, lora, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # read at call time
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 8 and "cannot reach the Hub at http://127.0.0.1:9" in res.stderr
    assert "HF_HUB_OFFLINE" in res.stderr


def test_server_error_is_retried_by_the_client(hub, lora):
    hub.state.fail("POST", r"/preupload/", 503, times=1)
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 0, res.stderr
    assert hub.state.paths("POST").count("/api/models/testuser/lora/preupload/main") == 2


def test_persistent_server_error_rolls_back_the_new_repo(hub, lora):
    hub.state.fail("POST", r"/commit/", 500)
    res = invoke("--json", "push", lora, "testuser/lora")
    assert res.code == 8 and "HTTP 500" in res.json["error"]["message"]
    assert "testuser/lora" not in hub.state.repos  # created by this push, deleted again


def test_failed_upload_rolls_back_new_branch_only(hub, lora):
    assert invoke("push", lora, "testuser/lora").code == 0
    (lora / "adapter_model.safetensors").write_bytes(
        (lora / "adapter_model.safetensors").read_bytes()[:-4] + b"\1\2\3\4")
    hub.state.fail("PUT", r"^/_lfs/", 403)
    res = invoke("push", lora, "testuser/lora", "--revision", "exp")
    assert res.code == 8
    repo = hub.state.repos["testuser/lora"]
    assert "exp" not in repo.branches and len(repo.commits) == 2


def test_token_never_printed(hub, lora, tmp_path):
    """--token with a known string: not in stdout/stderr (--json, --debug, errors) nor the card."""
    env = {"HF_TOKEN": ""}
    outputs = [
        run_cli("--json", "push", lora, "testuser/lora", "--token", TOKEN, env=env),
        run_cli("--debug", "push", lora, f"{OTHER}/x", "--token", TOKEN, env=env),
        run_cli("--debug", "--json", "inspect", "testuser/nope", "--token", TOKEN, env=env),
        run_cli("--debug", "push", lora, "testuser/lora", "--dry-run", "--token", TOKEN, env=env),
    ]
    hub.state.fail("POST", r"/commit/", 500)
    (lora / "adapter_config.json").write_text((lora / "adapter_config.json").read_text() + " ")
    outputs.append(run_cli("--debug", "push", lora, "testuser/lora", "--token", TOKEN, env=env))
    assert [r.code for r in outputs] == [0, 8, 3, 0, 8]
    for r in outputs:
        assert TOKEN not in r.stdout and TOKEN not in r.stderr
    files = hub.state.repos["testuser/lora"].resolve("main").files
    assert all(TOKEN.encode() not in b.data for b in files.values())
    sent = [v for _, _, h in hub.state.requests for k, v in h.items() if k.lower() == "authorization"]
    assert f"Bearer {TOKEN}" in sent  # the token was used, just never shown


def test_push_offline_is_refused_with_a_hint(hub, lora, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 8 and "HF_HUB_OFFLINE=1" in res.stderr and "--dry-run" in res.stderr
    dry = invoke("push", lora, "testuser/lora", "--dry-run")
    assert dry.code == 0 and hub.state.requests == []


def test_server_error_on_download(hub, lora):
    hub.seed("testuser/lora", lora)
    hub.state.fail("GET", r"^/api/models/testuser/lora", 500)
    res = invoke("inspect", "testuser/lora")
    assert res.code == 8 and "failed with HTTP 500" in res.stderr and "try again later" in res.stderr


def test_card_metadata_refused_by_the_hub(hub, lora):
    (lora / "README.md").write_text("---\nlicense: INVALID-YAML\n---\n\ntext\n")
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 8 and "refused the model card metadata" in res.stderr
    assert "testuser/lora" not in hub.state.repos
