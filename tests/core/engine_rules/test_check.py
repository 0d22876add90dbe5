"""core/engine_rules/check.py: ``check`` as a library call on real adapter folders (the examples)
against the example base: one verdict per (adapter, engine), the fix command, the report."""

from __future__ import annotations

import pytest

from adapterctl.core.engine_rules.check import ENGINES, check_adapters
from adapterctl.errors import InvalidAdapterError, NotFoundError
from tests.helpers import REPO

EX = REPO / "examples"
BASE = (str(EX / "tiny-base"), "examples/tiny-base")


def test_a_plain_lora_is_served_by_every_engine():
    report = check_adapters([(str(EX / "upper-lora"), "upper-lora")], None, BASE)
    assert [r.engine for r in report.results] == list(ENGINES)
    assert {r.verdict for r in report.results} == {"serves"} and report.ok
    doc = report.to_dict()
    assert doc["ok"] is True and len(doc["results"]) == len(ENGINES)


def test_dora_is_refused_by_vllm_with_the_conversion_that_fixes_it():
    report = check_adapters([(str(EX / "dragon-dora"), "dragon-dora")], ["vllm"], BASE)
    [r] = report.results
    assert r.verdict == "refuses" and not report.ok
    assert r.fix == "adapterctl convert dragon-dora dragon-dora-vllm --for vllm --base examples/tiny-base"
    assert any("DoRA" in f.message for f in r.reasons)


def test_several_adapters_are_checked_together():
    both = [(str(EX / "upper-lora"), "upper-lora"), (str(EX / "dragon-dora"), "dragon-dora")]
    report = check_adapters(both, ["vllm"], BASE)
    assert [(r.adapter, r.verdict) for r in report.results] == [("upper-lora", "serves"), ("dragon-dora", "refuses")]
    assert report.results[0].flags == ["--max-loras 2"]  # served together: one slot each


def test_without_a_base_the_report_says_what_was_not_compared(tmp_path):
    import json
    import shutil

    adapter = tmp_path / "lora"
    shutil.copytree(EX / "upper-lora", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "nowhere/base"}))
    report = check_adapters([(str(adapter), "lora")], ["sglang"])
    assert report.base is None and report.results[0].verdict == "serves"
    assert report.notes == [
        "lora: base not checked (give --base BASE): module names, vocabulary and tied embeddings are not compared"
    ]


def test_a_folder_without_an_adapter_is_not_found_and_an_empty_weights_file_invalid(tmp_path):
    with pytest.raises(NotFoundError, match="empty: no adapter_config.json in this directory"):
        check_adapters([(str(tmp_path), "empty")], ["vllm"], BASE)
    (tmp_path / "adapter_config.json").write_text((EX / "upper-lora" / "adapter_config.json").read_text())
    header = b'{"__metadata__":{}}'
    (tmp_path / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(InvalidAdapterError, match="holds no tensors"):
        check_adapters([(str(tmp_path), "hollow")], ["vllm"], BASE)
