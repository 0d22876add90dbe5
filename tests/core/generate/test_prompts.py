"""core/generate/prompts.py: the one lookup from what a JSONL prompt's ``adapter`` names to a
loaded adapter, shared by our engine's router and by generate --engine vllm / --endpoint jobs."""

import pytest

from adapterctl.core.generate.prompts import PromptSpec, adapter_lookup, named_adapter
from adapterctl.core.generate.jobs import plan_jobs
from adapterctl.errors import UsageError


def test_by_name_typed_reference_or_any_spelling_of_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ads" / "a1"
    folder.mkdir(parents=True)
    lookup = adapter_lookup([("first", "user/a1", folder), ("second", "./b", tmp_path / "b")])
    monkeypatch.chdir(tmp_path)
    assert lookup("first") == lookup("user/a1") == lookup(str(folder)) == "first"
    assert lookup("ads/a1") == lookup("./ads/../ads/a1") == "first"  # the same folder, spelled otherwise
    assert lookup("./b") == "second" and lookup("nothing") is None


def test_names_win_over_paths_that_look_the_same(tmp_path):
    lookup = adapter_lookup([("x", "x-ref", tmp_path / "a"), ("y", "x", tmp_path / "b")])
    assert lookup("x") == "x"


def test_the_router_and_the_jobs_refuse_alike():
    lookup = adapter_lookup([("a", "a", "a")])
    spec = PromptSpec("p1", "hi", adapter="missing")
    with pytest.raises(UsageError) as direct:
        named_adapter(spec, lookup)
    with pytest.raises(UsageError) as jobs:
        plan_jobs([spec], None, lookup)
    assert direct.value.message == jobs.value.message and "'missing'" in direct.value.message
    assert plan_jobs([PromptSpec("p2", "hi", adapter="a")], None, lookup)[0].label == "a"
