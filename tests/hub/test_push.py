"""``adapterctl push`` against the local Hub server, read back with the real client and CLI."""

from __future__ import annotations

import filecmp
import shutil

import pytest
import yaml

from tests.helpers import invoke, run_cli, write_adapter
from tests.hub.conftest import OTHER


@pytest.fixture
def lora(peft_adapter, tmp_path):
    """A PEFT adapter (with PEFT's README) copied so tests may add files to it."""
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    return shutil.copytree(src, tmp_path / "lora")


def _front(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def _remote(hub, repo_id: str, rev: str = "main") -> dict[str, bytes]:
    repo = hub.state.repos[repo_id]
    return {p: b.data for p, b in repo.resolve(rev).files.items()}


def test_push_round_trip_then_inspect_by_id(hub, lora, tmp_path):
    res = invoke("--json", "push", lora, "testuser/lora", "--base-model", "org/base")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] and doc["changed"] and doc["created_repo"] and doc["revision"] == "main"
    assert doc["commit_url"] == f"{hub.endpoint}/testuser/lora/commit/{doc['commit_id']}"
    assert [f["path"] for f in doc["files"]] == ["adapter_config.json", "adapter_model.safetensors",
                                                 "README.md"]
    from huggingface_hub import HfApi

    snap = HfApi(endpoint=hub.endpoint).snapshot_download("testuser/lora", cache_dir=tmp_path / "c")
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # byte for byte
        assert filecmp.cmp(f"{snap}/{name}", lora / name, shallow=False)
    out = run_cli("--json", "inspect", "testuser/lora")
    assert out.code == 0, out.stderr
    assert out.json["source"] == "testuser/lora" and out.json["num_tensors"] == 8
    local = invoke("--json", "inspect", lora).json
    assert out.json["modules"] == local["modules"]


def test_card_keeps_user_text_and_sets_peft_metadata(hub, lora):
    readme = lora / "README.md"
    readme.write_text("---\nlicense: mit\ntags:\n- mine\n---\n\n# My adapter\n\nHand-written notes.\n")
    assert invoke("push", lora, "testuser/lora", "--base-model", "org/base").code == 0
    card = _remote(hub, "testuser/lora")["README.md"].decode()
    meta = _front(card)
    assert meta["license"] == "mit" and meta["library_name"] == "peft"
    assert meta["base_model"] == "org/base" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["mine", "lora", "base_model:adapter:org/base"]
    assert card.endswith("\n# My adapter\n\nHand-written notes.\n")


def test_local_base_path_from_peft_is_not_put_in_the_card(hub, lora):
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 0 and "is a local path, not a Hub id" in res.stderr
    meta = _front(_remote(hub, "testuser/lora")["README.md"].decode())
    assert "base_model" not in meta and meta["tags"] == ["lora", "transformers"]
    assert meta["library_name"] == "peft" and "/tmp" not in str(meta)


def test_card_from_the_hub_is_kept_when_the_folder_has_none(hub, lora):
    (lora / "README.md").unlink()
    assert invoke("push", lora, "testuser/lora", "--base-model", "org/base").code == 0
    repo = hub.state.repos["testuser/lora"]
    from tests.hubserver import Blob

    edited = _remote(hub, "testuser/lora")["README.md"].decode() + "\nEdited on the Hub.\n"
    repo.resolve("main").files["README.md"] = Blob(edited.encode(), False)
    assert invoke("push", lora, "testuser/lora").code == 0
    assert _remote(hub, "testuser/lora")["README.md"].decode() == edited


def test_unchanged_folder_makes_no_commit(hub, lora):
    assert invoke("push", lora, "testuser/lora").code == 0
    commits = hub.state.commit_count("testuser/lora")
    res = invoke("push", lora, "testuser/lora")
    assert res.code == 0 and "No changes" in res.stdout
    assert hub.state.commit_count("testuser/lora") == commits
    again = invoke("--json", "push", lora, "testuser/lora")
    assert again.json["changed"] is False and hub.state.commit_count("testuser/lora") == commits


def test_dry_run_lists_files_and_card_and_changes_nothing(hub, lora):
    res = invoke("--json", "push", lora, "testuser/lora", "--dry-run", "--base-model", "org/base")
    assert res.code == 0
    doc = res.json
    sizes = {f["path"]: f["size"] for f in doc["files"]}
    assert sizes["adapter_model.safetensors"] == (lora / "adapter_model.safetensors").stat().st_size
    assert _front(doc["card"])["library_name"] == "peft" and doc["total_bytes"] == sum(sizes.values())
    assert doc["remote"] == {"compared": True, "note": None}  # no such repo yet: every file is new
    assert doc["replaces"] == [{"path": p, "exists": False} for p in sizes]
    human = invoke("push", lora, "testuser/lora", "--dry-run")
    assert "adapter_model.safetensors" in human.stdout and "library_name: peft" in human.stdout
    # one read per dry run (the remote's file list), nothing written
    assert [m for m, _, _ in hub.state.requests] == ["GET", "GET"] and "testuser/lora" not in hub.state.repos


def test_dry_run_says_which_remote_files_it_replaces(hub, lora):
    assert invoke("push", lora, "testuser/lora", "--base-model", "org/base").code == 0
    (lora / "tokenizer.json").write_text("{}")
    res = invoke("--json", "push", lora, "testuser/lora", "--dry-run")
    assert res.code == 0, res.stderr
    assert {r["path"]: r["exists"] for r in res.json["replaces"]} == {
        "adapter_config.json": True, "adapter_model.safetensors": True, "tokenizer.json": False,
        "README.md": True}
    human = invoke("push", lora, "testuser/lora", "--dry-run")
    assert "replaced" in human.stdout and "new" in human.stdout


def test_only_adapter_files_by_default_include_exclude(hub, lora):
    (lora / "checkpoint-10").mkdir()
    (lora / "checkpoint-10" / "optimizer.pt").write_bytes(b"\0" * 1024)
    (lora / "notes.txt").write_text("scratch")
    (lora / "tokenizer.json").write_text("{}")
    assert invoke("push", lora, "testuser/a").code == 0
    assert set(_remote(hub, "testuser/a")) == {".gitattributes", "README.md", "adapter_config.json",
                                               "adapter_model.safetensors", "tokenizer.json"}
    assert invoke("push", lora, "testuser/b", "--include", "checkpoint-*/*", "--include",
                  "notes.txt", "--exclude", "tokenizer*").code == 0
    assert set(_remote(hub, "testuser/b")) == {".gitattributes", "README.md", "adapter_config.json",
                                               "adapter_model.safetensors", "notes.txt",
                                               "checkpoint-10/optimizer.pt"}


def test_revision_branch_private_message_and_pr(hub, lora):
    assert invoke("push", lora, "testuser/lora", "--private").code == 0
    repo = hub.state.repos["testuser/lora"]
    assert repo.private
    main_head = repo.branches["main"]
    (lora / "adapter_config.json").write_text((lora / "adapter_config.json").read_text() + " ")
    res = invoke("--json", "push", lora, "testuser/lora", "--revision", "v2", "-m", "second try")
    assert res.code == 0 and res.json["created_branch"] and res.json["revision"] == "v2"
    assert repo.branches["main"] == main_head and repo.commits[repo.branches["v2"]].title == "second try"
    (lora / "adapter_config.json").write_text((lora / "adapter_config.json").read_text() + " ")
    pr = invoke("--json", "push", lora, "testuser/lora", "--create-pr")
    assert pr.code == 0 and pr.json["pr_url"] == f"{hub.endpoint}/testuser/lora/discussions/1"
    assert repo.branches["main"] == main_head and "refs/pr/1" in repo.branches


def test_push_merged_model_folder(hub, tiny_models, tmp_path):
    merged = shutil.copytree(tiny_models["llama"], tmp_path / "merged")
    res = invoke("--json", "push", merged, "testuser/merged", "--base-model", "org/base")
    assert res.code == 0, res.stdout
    files = _remote(hub, "testuser/merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    meta = _front(files["README.md"].decode())
    assert meta["library_name"] == "transformers" and meta["base_model_relation"] == "merge"
    assert meta["base_model"] == "org/base"


def test_unusable_adapter_is_refused_before_any_request(hub, tmp_path):
    import torch

    bad = write_adapter(tmp_path / "bad", {"r": 8}, {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 64),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 4)})
    res = invoke("push", bad, "testuser/bad")
    assert res.code == 4 and "refusing to push" in res.stderr and "rank_mismatch" in res.stderr
    assert hub.state.requests == []


def test_push_refuses_a_folder_that_is_neither(hub, tmp_path):
    res = invoke("push", tmp_path, "testuser/x")
    assert res.code == 3 and "neither adapter_config.json nor config.json" in res.stderr
    res = invoke("push", tmp_path / "missing", "testuser/x")
    assert res.code == 3
    res = invoke("push", tmp_path, "not a repo id")
    assert res.code == 2 and "not a Hub repo id" in res.stderr


def test_push_refuses_when_excludes_leave_nothing(hub, lora):
    res = invoke("push", lora, "testuser/x", "--exclude", "*")
    assert res.code == 2 and "nothing to upload" in res.stderr and hub.state.requests == []


def test_push_to_another_namespace_is_refused(hub, lora):
    hub.state.create(f"{OTHER}/theirs")
    res = invoke("push", lora, f"{OTHER}/theirs")
    assert res.code == 8 and "no write access" in res.stderr
    assert len(hub.state.repos[f"{OTHER}/theirs"].commits) == 1


def test_token_from_the_saved_login(hub, lora, monkeypatch):
    from tests.hub.conftest import TOKEN

    monkeypatch.delenv("HF_TOKEN")
    hub.home.mkdir(parents=True, exist_ok=True)
    (hub.home / "token").write_text(TOKEN)  # what `hf auth login` leaves in HF_HOME
    res = run_cli("--json", "push", lora, "testuser/lora")
    assert res.code == 0, res.stderr
    assert res.json["created_repo"] and TOKEN not in res.stdout + res.stderr
