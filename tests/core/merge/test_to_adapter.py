"""``merge --to-adapter`` as a library call (core/merge/to_adapter.py): the new adapter is written
by the shared writer with the one adapter card, and a dry run writes nothing."""

from __future__ import annotations

import json

from adapterctl.core.lora.combine import combine_adapters
from adapterctl.core.merge.plan import load_adapters
from adapterctl.core.merge.to_adapter import combine_to_adapter, write_combined_adapter
from adapterctl.io.folders.model_card import split_card


def test_new_adapter_is_written_by_the_shared_writer(peft_adapter, tmp_path):
    a = peft_adapter("llama", r=2, target_modules=["q_proj"])
    combined = combine_adapters(load_adapters([a, a]), [0.5, 0.5], "cat")
    notes = write_combined_adapter(combined, tmp_path)
    text = (tmp_path / "adapter_config.json").read_text()
    assert json.loads(text)["r"] == 4
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    meta, body = split_card((tmp_path / "README.md").read_text())
    assert meta == {"library_name": "peft", "tags": ["lora"], "pipeline_tag": "text-generation"}
    assert "merge --to-adapter" in body  # the base is a local folder: never named, and said so
    assert notes and "is a local path, not a Hub id" in notes[0]


def test_combine_to_adapter_result_and_dry_run(peft_adapter, tmp_path):
    a = peft_adapter("llama", r=2, target_modules=["q_proj"])
    b = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj"])
    dry = combine_to_adapter([str(a), str(b)], tmp_path / "o", weights=[1.0, 0.5], dry_run=True)
    assert not (tmp_path / "o").exists()
    assert dry.to_dict() == {"dry_run": True, "output": str(tmp_path / "o"), "method": "cat",
                             "adapters": [str(a), str(b)], "weights": [1.0, 0.5], "modules": 4,
                             "r": 2, "rank_pattern": {}, "warnings": dry.warnings,
                             "replaces": [{"path": str(tmp_path / "o"), "exists": False}]}
    done = combine_to_adapter([str(a), str(b)], tmp_path / "o", method="linear")
    assert not done.dry_run and done.method == "cat" and (tmp_path / "o" / "README.md").is_file()
