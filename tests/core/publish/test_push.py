"""push as a library call (core/publish/push.py): the plan (files, card, warnings) and the report
of a dry run, offline and without torch; the commit itself is tested against the local Hub
server in tests/hub/test_push.py."""

from __future__ import annotations

import pytest

from adapterctl.core.publish.push import PushReport, default_message, plan_push
from adapterctl.errors import UsageError
from adapterctl.io.folders.model_card import split_card
from tests.helpers import REPO


def test_dry_run_report_of_the_example_adapter(monkeypatch):
    monkeypatch.chdir(REPO)  # examples/tiny-base is then a local folder, not a Hub id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_push(REPO / "examples" / "upper-lora", "me/upper-lora")
    doc = PushReport(plan).to_dict()
    assert doc["dry_run"] and doc["revision"] == "main" and doc["kind"] == "adapter"
    assert [f["path"] for f in doc["files"]] == ["adapter_config.json",
                                                 "adapter_model.safetensors", "README.md"]
    assert doc["base_model"] is None and split_card(doc["card"])[0]["library_name"] == "peft"
    assert plan.warnings == ["base model 'examples/tiny-base' is a local path, not a Hub id: the "
                             "card names no base_model (pass --base-model user/repo)"]
    assert default_message(plan) == "Upload LoRA adapter with adapterctl"


@pytest.mark.parametrize("repo_id", ["not a repo", "user/repo@v2", "../x"])
def test_repo_id_is_checked_first(repo_id, tmp_path):
    with pytest.raises(UsageError, match="is not a Hub repo id"):
        plan_push(tmp_path / "missing", repo_id)
