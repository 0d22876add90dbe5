"""The local Hub server itself, driven by the real huggingface_hub client (hub-protocol.md §3)."""

from __future__ import annotations

import urllib.request

import pytest

from tests.hub.conftest import TOKEN


@pytest.fixture
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def pushed(hub, api, peft_adapter):
    folder = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    api.create_repo("testuser/lora")
    info = api.upload_folder(repo_id="testuser/lora", folder_path=str(folder))
    return folder, info


def test_upload_goes_through_lfs_and_commit(hub, pushed):
    posts = hub.state.paths("POST")
    assert "/testuser/lora.git/info/lfs/objects/batch" in posts
    assert "/api/models/testuser/lora/commit/main" in posts and "/api/validate-yaml" in posts
    assert any(p.startswith("/_lfs/") for p in hub.state.paths("PUT"))
    assert pushed[1].oid == hub.state.repos["testuser/lora"].branches["main"]


def test_download_tree_refs_and_missing_file(hub, api, pushed, tmp_path):
    folder, _ = pushed
    path = api.hf_hub_download("testuser/lora", "adapter_model.safetensors", cache_dir=tmp_path)
    assert open(path, "rb").read() == (folder / "adapter_model.safetensors").read_bytes()
    snap = api.snapshot_download("testuser/lora", cache_dir=tmp_path / "snap")
    assert (tmp_path / "snap").exists() and snap.endswith(api.model_info("testuser/lora").sha)
    assert sorted(api.list_repo_files("testuser/lora")) == [
        ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [b.name for b in api.list_repo_refs("testuser/lora").branches] == ["main"]
    assert not api.file_exists("testuser/lora", "nope.bin")
    meta = api.parse_safetensors_file_metadata("testuser/lora", "adapter_model.safetensors")
    assert len(meta.tensors) == 8


def test_range_requests(hub, pushed):
    folder, _ = pushed
    data = (folder / "adapter_model.safetensors").read_bytes()
    url = f"{hub.endpoint}/testuser/lora/resolve/main/adapter_model.safetensors"
    req = urllib.request.Request(url, headers={"Range": "bytes=2-9"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.read() == data[2:10]
        assert resp.headers["Content-Range"] == f"bytes 2-9/{len(data)}"
    req = urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 416


def test_writes_need_the_owners_token(hub, pushed):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.endpoint, token="hf_nobody").create_repo("testuser/x")
    assert err.value.response.status_code == 401
    from tests.hub.conftest import OTHER_TOKEN

    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.endpoint, token=OTHER_TOKEN).delete_repo("testuser/lora")
    assert err.value.response.status_code == 403

