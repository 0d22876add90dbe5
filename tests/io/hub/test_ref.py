"""io/hub/ref.py: what is a Hub id (and what is a local path), ``@revision`` suffixes, the
endpoint, and a token that never shows."""

from __future__ import annotations

import pytest

from adapterctl.io.hub.ref import HubOptions, endpoint_of, looks_like_hub_id, split_revision


@pytest.mark.parametrize("ref", ["user/repo", "Org-1/my.model_v2", "user/repo@main", "user/repo@refs/pr/3", "u/r@0123abc"])
def test_hub_ids(ref):
    assert looks_like_hub_id(ref)


@pytest.mark.parametrize(
    "ref", ["./user/repo", "/abs/path", "~/x/y", "repo", "a/b/c", "user/re--po", "user/..", "-user/repo", "user/repo@"]
)
def test_not_hub_ids(ref):
    assert not looks_like_hub_id(ref)


def test_the_option_wins_over_the_suffix():
    assert split_revision("user/repo@v1", None) == ("user/repo", "v1")
    assert split_revision("user/repo@v1", "main") == ("user/repo", "main")
    assert split_revision("user/repo", None) == ("user/repo", None)


def test_endpoint_from_options_then_environment(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert endpoint_of(None) == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert endpoint_of(HubOptions()) == "http://127.0.0.1:9"
    assert endpoint_of(HubOptions(endpoint="https://hub.example/")) == "https://hub.example"


def test_the_token_is_not_in_the_repr():
    assert "hf_secret" not in repr(HubOptions(token="hf_secret", revision="main"))
