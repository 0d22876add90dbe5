"""io/hub/resolve.py: a local ADAPTER or BASE argument is used as it is, a path that is no Hub id
is not found (without any network); Hub ids against a local Hub server: tests/hub/test_resolve.py."""

from __future__ import annotations

import pytest

from adapterctl.errors import NotFoundError
from adapterctl.io.hub import resolve
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_local, resolve_model_dir
from tests.helpers import REPO


def test_local_folders_are_used_as_they_are(monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local folder went to the Hub")

    monkeypatch.setattr(resolve.hub_io, "download_adapter", no_hub)
    monkeypatch.setattr(resolve.hub_io, "download_model", no_hub)
    assert resolve_adapter_dir(REPO / "examples" / "upper-lora") == REPO / "examples" / "upper-lora"
    assert resolve_model_dir(str(REPO / "examples" / "tiny-base")) == REPO / "examples" / "tiny-base"


def test_a_missing_path_that_is_no_hub_id_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no such adapter directory") as err:
        resolve_adapter_dir(str(tmp_path / "a" / "b" / "c"))
    assert "Hub id like user/repo" in err.value.hint
    with pytest.raises(NotFoundError, match="./nowhere: no such model directory"):
        resolve_model_dir("./nowhere")


def test_a_hub_id_goes_to_the_hub_with_the_options(monkeypatch):
    seen = []
    monkeypatch.setattr(resolve.hub_io, "download_adapter", lambda ref, hub, **kw: seen.append((ref, hub, kw)) or "/cache/x")
    assert resolve_adapter_dir("user/lora@v2", header_only=True) == "/cache/x"
    [(ref, hub, kw)] = seen
    assert ref == "user/lora@v2" and hub.revision is None and kw == {"need_weights": True, "header_only": True}
    assert resolve_local("user/lora", "adapter") is None
