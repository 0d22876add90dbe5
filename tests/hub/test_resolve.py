"""Hub ids through io/hub/resolve.py (what every command uses): only the needed files cross the wire,
revisions pin, offline mode uses the cache and says so. Real client, real HTTP, local server."""

from __future__ import annotations

import filecmp

import pytest

from adapterctl.errors import HubError, NotFoundError
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir
from adapterctl.io.safetensors.header import read_safetensors_header


@pytest.fixture
def lora(peft_adapter):
    return peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])


def _gets(hub, repo_id: str) -> list[str]:
    """Files fully downloaded (GET without Range) from ``repo_id``."""
    return sorted({path.rsplit("/", 1)[-1] for m, path, h in hub.state.requests
                   if m == "GET" and f"/{repo_id}/resolve/" in path and "Range" not in h
                   and "range" not in h})


def test_adapter_download_gets_config_and_weights_only(hub, lora):
    hub.seed("testuser/lora", lora)
    hub.seed_commit("testuser/lora", lora, {"checkpoint-100/optimizer.pt": b"\0" * 4096,
                                            "adapter_model.bin": b"\0" * 64})
    folder = resolve_adapter_dir("testuser/lora", HubOptions())
    assert _gets(hub, "testuser/lora") == ["adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert filecmp.cmp(folder / name, lora / name, shallow=False)
    assert "hf_home/hub/models--testuser--lora/snapshots/" in folder.as_posix()


def test_header_only_never_downloads_weights(hub, lora):
    sha = hub.seed("testuser/lora", lora)
    folder = resolve_adapter_dir("testuser/lora", HubOptions(), need_weights=False, header_only=True)
    assert _gets(hub, "testuser/lora") == ["adapter_config.json"]
    ranged = [h for m, p, h in hub.state.requests if p.endswith("adapter_model.safetensors")
              and m == "GET"]
    assert ranged and all(h.get("range", h.get("Range", "")).startswith("bytes=") for h in ranged)
    assert folder.name == sha and (folder / "HEADER_ONLY").is_file()
    remote = read_safetensors_header(folder / "adapter_model.safetensors")
    local = read_safetensors_header(lora / "adapter_model.safetensors")
    assert remote.tensors == local.tensors and remote.metadata == local.metadata


def test_model_download_gets_config_weights_tokenizer(hub, tiny_models, tmp_path):
    import shutil

    base = shutil.copytree(tiny_models["llama"], tmp_path / "base")
    (base / "training_args.bin").write_bytes(b"\0" * 64)
    hub.seed("testuser/base", base)
    folder = resolve_model_dir("testuser/base", HubOptions())
    got = _gets(hub, "testuser/base")
    assert "training_args.bin" not in got
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(got)
    assert filecmp.cmp(folder / "model.safetensors", base / "model.safetensors", shallow=False)


def test_model_header_only_for_inspect_base(hub, tiny_models):
    hub.seed("testuser/base", tiny_models["llama"])
    folder = resolve_model_dir("testuser/base", HubOptions(), need_weights=False, header_only=True)
    assert _gets(hub, "testuser/base") == ["config.json", "generation_config.json"]
    header = read_safetensors_header(folder / "model.safetensors")
    assert header.tensors == read_safetensors_header(tiny_models["llama"] / "model.safetensors").tensors


def test_revision_pinning(hub, lora, peft_adapter):
    first = hub.seed("testuser/lora", lora)
    other = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    repo = hub.state.repos["testuser/lora"]
    repo.branches["v1"] = first
    second = hub.seed_commit("testuser/lora", other)
    for ref, hub_opts in (("testuser/lora@v1", HubOptions()), ("testuser/lora", HubOptions(revision=first)),
                          (f"testuser/lora@{first}", HubOptions())):
        folder = resolve_adapter_dir(ref, hub_opts)
        assert folder.name == first
        assert filecmp.cmp(folder / "adapter_model.safetensors", lora / "adapter_model.safetensors",
                           shallow=False)
    assert resolve_adapter_dir("testuser/lora", HubOptions()).name == second


def test_offline_after_first_download(hub, lora, monkeypatch):
    hub.seed("testuser/lora", lora)
    online = resolve_adapter_dir("testuser/lora@main", HubOptions())
    hub.state.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = []
    offline = resolve_adapter_dir("testuser/lora@main", HubOptions(log=said.append))
    assert offline == online and hub.state.requests == []
    assert said and "HF_HUB_OFFLINE=1" in said[0] and "cached" in said[0]
    with pytest.raises(NotFoundError, match="not in the local Hugging Face cache"):
        resolve_adapter_dir("testuser/other", HubOptions())


def test_network_down_falls_back_to_cache(hub, lora, monkeypatch):
    hub.seed("testuser/lora", lora)
    online = resolve_adapter_dir("testuser/lora", HubOptions())
    said = []
    dead = HubOptions(endpoint="http://127.0.0.1:9", log=said.append)  # discard port: refused
    assert resolve_adapter_dir("testuser/lora", dead) == online
    assert "cannot reach" in said[0]
    with pytest.raises(HubError, match="cannot reach the Hub"):
        resolve_adapter_dir("testuser/never-cached", dead)


def test_repo_without_adapter_config(hub, tiny_models):
    hub.seed("testuser/base", tiny_models["llama"])
    with pytest.raises(NotFoundError, match="no adapter_config.json") as err:
        resolve_adapter_dir("testuser/base", HubOptions())
    assert err.value.exit_code == 3 and "full model" in err.value.hint


def _shard(src, dest):
    """``src`` model folder rewritten with two safetensors shards and an index."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(dest / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def test_sharded_model_full_and_header_only(hub, tiny_models, tmp_path):
    base = _shard(tiny_models["llama"], tmp_path / "sharded")
    hub.seed("testuser/sharded", base)
    heads = resolve_model_dir("testuser/sharded", HubOptions(), need_weights=False, header_only=True)
    assert _gets(hub, "testuser/sharded") == ["config.json", "generation_config.json",
                                              "model.safetensors.index.json"]
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert read_safetensors_header(heads / shard).tensors == \
            read_safetensors_header(base / shard).tensors
    full = resolve_model_dir("testuser/sharded", HubOptions())
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert filecmp.cmp(full / shard, base / shard, shallow=False)
    from adapterctl.io.folders.model_dir import locate_model_files

    assert len(locate_model_files(full).weight_files) == len(locate_model_files(heads).weight_files) == 2


def test_hf_hub_cache_is_read_at_call_time(hub, lora, tmp_path, monkeypatch):
    hub.seed("testuser/lora", lora)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    folder = resolve_adapter_dir("testuser/lora", HubOptions())
    assert folder.is_relative_to(tmp_path / "elsewhere")
    assert not (hub.home / "hub" / "models--testuser--lora").exists()


def test_header_only_legacy_bin_adapter_is_not_downloaded(hub, lora, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "adapter_config.json").write_bytes((lora / "adapter_config.json").read_bytes())
    (legacy / "adapter_model.bin").write_bytes(b"\0" * 2048)  # never opened by inspect
    hub.seed("testuser/legacy", legacy)
    folder = resolve_adapter_dir("testuser/legacy", HubOptions(), need_weights=False, header_only=True)
    assert _gets(hub, "testuser/legacy") == ["adapter_config.json"]
    from adapterctl.core.adapter.inspect import inspect_adapter

    summary = inspect_adapter(folder, source="testuser/legacy")
    assert summary.weights.weights_format == "bin" and [p.code for p in summary.problems][:1] == ["legacy_bin"]
