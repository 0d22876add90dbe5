"""Hub faults against the local Hub server, as seen by a command: downloads cut short, server
errors on download, connection refused. Each ends in a clear exit code 8 (or in success after the
client's retries), and the cache never holds a corrupt file that a later run would trust.
Upload-side faults (commit failing after upload, 5xx retried) are in tests/hub/test_errors.py."""

from __future__ import annotations

import filecmp
import shutil

import pytest

from tests.helpers import invoke

WEIGHTS = r"^/testuser/lora/resolve/[^/]+/adapter_model\.safetensors$"


@pytest.fixture
def lora(peft_adapter, tmp_path):
    return shutil.copytree(peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"]),
                           tmp_path / "lora")


def _cached_weights(hub):
    """Every adapter_model.safetensors the cache would hand to a later run."""
    snaps = hub.home / "hub" / "models--testuser--lora" / "snapshots"
    return [p for p in snaps.rglob("adapter_model.safetensors")] if snaps.exists() else []


def _assert_cache_clean_or_complete(hub, lora):
    for path in _cached_weights(hub):
        assert filecmp.cmp(path, lora / "adapter_model.safetensors", shallow=False), path


def test_truncated_download_every_time(hub, lora, tmp_path):
    hub.seed("testuser/lora", lora)
    hub.state.truncate("GET", WEIGHTS)
    res = invoke("--json", "convert", "--rank", "2", "testuser/lora", tmp_path / "out")
    assert res.code == 8, res.stdout
    assert res.json["error"]["type"] == "hub"
    assert "download testuser/lora: the connection to" in res.json["error"]["message"]
    assert "broke off" in res.json["error"]["message"]
    assert not (tmp_path / "out").exists()
    assert _cached_weights(hub) == []  # nothing half-downloaded looks complete
    hub.state.faults.clear()  # the next run downloads it again, whole
    res = invoke("convert", "--rank", "2", "testuser/lora", tmp_path / "out")
    assert res.code == 0, res.stderr
    _assert_cache_clean_or_complete(hub, lora)
    assert len(_cached_weights(hub)) == 1


def test_truncated_download_once_is_retried_or_refused_cleanly(hub, lora, tmp_path):
    hub.seed("testuser/lora", lora)
    hub.state.truncate("GET", WEIGHTS, times=1)
    res = invoke("convert", "--rank", "2", "testuser/lora", tmp_path / "out")
    assert res.code in (0, 8), res.stderr
    _assert_cache_clean_or_complete(hub, lora)
    assert invoke("convert", "--rank", "2", "testuser/lora", tmp_path / "out2").code == 0
    _assert_cache_clean_or_complete(hub, lora)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_on_download(hub, lora, tmp_path, status):
    hub.seed("testuser/lora", lora)
    hub.state.fail("GET", WEIGHTS, status)
    res = invoke("convert", "--rank", "2", "testuser/lora", tmp_path / "out")
    assert res.code == 8 and f"HTTP {status}" in res.stderr, res.stderr
    assert _cached_weights(hub) == [] and not (tmp_path / "out").exists()


def test_connection_refused_without_cache(hub, lora, tmp_path, monkeypatch):
    hub.seed("testuser/lora", lora)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for args in (("inspect", "testuser/lora"),
                 ("convert", "--rank", "2", "testuser/lora", tmp_path / "out")):
        res = invoke(*args)
        assert res.code == 8 and "cannot reach the Hub at http://127.0.0.1:9" in res.stderr
    assert not (tmp_path / "out").exists()
