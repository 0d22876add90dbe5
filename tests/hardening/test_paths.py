"""Paths from strangers' files never leave the folder: index entries, adapter names, Hub file names
and revisions that try ``..``, absolute paths or symlinks are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from adapterctl.core.lora.loaded import load_adapter
from adapterctl.errors import AdapterctlError
from adapterctl.io.folders.model_dir import locate_model_files
from tests.helpers import invoke, write_adapter


@pytest.fixture
def model(tiny_models, tmp_path):
    return shutil.copytree(tiny_models["llama"], tmp_path / "model", symlinks=True)


def _index(model, weight_map):
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("entry", ["../secret.safetensors", "/etc/passwd", "a/../../x.safetensors",
                                   "..", "", 7, None])
def test_index_entry_outside_the_folder_is_refused(model, entry):
    (model.parent / "secret.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    _index(model, {"lm_head.weight": entry})
    with pytest.raises(AdapterctlError) as err:
        locate_model_files(model)
    assert err.value.exit_code == 4 and "points outside the model folder" in err.value.message
    res = invoke("--json", "inspect", "--base", model, model)  # any command that reads the base
    assert res.code != 1


def test_index_symlink_out_of_the_folder_is_refused(model, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(model / "model.safetensors", outside)
    (model / "shard.safetensors").symlink_to(outside)
    _index(model, {"lm_head.weight": "shard.safetensors"})
    with pytest.raises(AdapterctlError) as err:
        locate_model_files(model)
    assert err.value.exit_code == 4 and "symlink out of the model folder" in err.value.message


def test_index_symlink_inside_the_folder_is_fine(model):
    (model / "shard.safetensors").symlink_to(model / "model.safetensors")
    _index(model, {"lm_head.weight": "shard.safetensors"})
    assert locate_model_files(model).weight_files == (model / "shard.safetensors",)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "../up", "x\\y", "", "a b", "ä"])
def test_adapter_names_that_are_paths_are_refused(tmp_path, name):
    p = "base_model.model.model.layers.0.self_attn.q_proj"
    folder = write_adapter(tmp_path / "a", {}, {f"{p}.lora_A.weight": torch.zeros(8, 4),
                                                f"{p}.lora_B.weight": torch.zeros(4, 8)})
    with pytest.raises(AdapterctlError) as err:
        load_adapter(folder, name=name)
    assert err.value.exit_code == 2 and "is not allowed" in err.value.message


# ----- Hub: file names and revisions chosen by the server or the adapter --------------------------
def test_hub_index_naming_files_outside_the_repo(hub, tiny_models, peft_adapter, tmp_path):
    """A Hub model whose index sends shards to ``../`` or absolute paths: nothing is fetched from
    there, nothing is written outside the cache, and the model is refused."""
    model = shutil.copytree(tiny_models["llama"], tmp_path / "m")
    (model / "model.safetensors").rename(model / "model-1.safetensors")
    _index(model, {"lm_head.weight": "../../../../escape.safetensors",
                   "model.norm.weight": "/tmp/escape.safetensors",
                   "model.embed_tokens.weight": "model-1.safetensors"})
    hub.seed("testuser/evil", model)
    before = set(tmp_path.rglob("*"))
    lora = peft_adapter("llama", r=2, target_modules=["q_proj"])
    for args in (("inspect", "--base", "testuser/evil", lora),
                 ("convert", "--extract", "testuser/evil", "testuser/evil", tmp_path / "o", "--rank", "2")):
        res = invoke(*args)
        assert res.code == 4 and "points outside the model folder" in res.stderr, res.stderr
    assert not any("escape" in p for _, p, _ in hub.state.requests)
    created = {p for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(hub.home)}
    assert created == set()


def test_hub_revision_with_dot_dot_writes_nothing_outside_the_repo_cache(hub, tmp_path):
    """A revision like ``../../x`` (typed, or in an adapter's config) that the server answers must
    not become a path: the cache's ``refs/<revision>`` file stays inside the repo's folder."""
    folder = write_adapter(tmp_path / "a", {}, {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4, 8)})
    sha = hub.seed("testuser/lora", folder)
    evil = "../../../escaped"
    hub.state.repos["testuser/lora"].branches[evil] = sha
    for args in (("inspect", f"testuser/lora@{evil}"), ("inspect", "testuser/lora", "--revision", evil)):
        res = invoke(*args)
        assert res.code == 2 and "is not a valid revision" in res.stderr, res.stderr
    assert list(hub.home.rglob("*escaped*")) == []
    assert invoke("inspect", "testuser/lora@main").code == 0


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b"])
def test_attach_name_option_that_is_a_path_is_refused(tiny_models, peft_adapter, name):
    lora = peft_adapter("llama", r=2, target_modules=["q_proj"])
    res = invoke("--json", "attach", tiny_models["llama"], lora, "--name", name)
    assert res.code == 2 and "is not allowed" in res.json["error"]["message"], res.stdout


@pytest.mark.parametrize("link", ["notes.txt", "README.md", "adapter_model.safetensors"])
def test_push_refuses_symlinks_out_of_the_folder(hub, peft_adapter, tmp_path, link):
    """A folder from a stranger with a link to a secret (say the saved Hub token): the push is
    refused before any request, and the secret is published nowhere."""
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_NOT_FOR_THE_HUB")
    lora = shutil.copytree(peft_adapter("llama", r=2, target_modules=["q_proj"]), tmp_path / "lora")
    (lora / link).unlink(missing_ok=True)
    (lora / link).symlink_to(secret)
    res = invoke("push", lora, "testuser/lora", "--include", "*.txt")
    assert res.code == 4, res.stderr
    if link != "adapter_model.safetensors":  # linked weights already fail validation
        assert "outside" in res.stderr and "refusing to upload it" in res.stderr
    assert hub.state.requests == [] and "testuser/lora" not in hub.state.repos


def test_push_accepts_links_inside_the_folder(hub, peft_adapter, tmp_path):
    lora = shutil.copytree(peft_adapter("llama", r=2, target_modules=["q_proj"]), tmp_path / "lora")
    (lora / "copy.txt").write_text("notes")
    (lora / "notes.txt").symlink_to(lora / "copy.txt")
    res = invoke("push", lora, "testuser/lora", "--include", "*.txt")
    assert res.code == 0, res.stderr
    files = hub.state.repos["testuser/lora"].resolve("main").files
    assert files["notes.txt"].data == b"notes"
