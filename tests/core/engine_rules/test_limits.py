"""core/engine_rules/limits.py: the LoRA limits an engine starts with for the adapters it will
load (vLLM's allowed ``--max-lora-rank`` values and its empty CPU slot; SGLang's any rank), and the
prepared-adapter record ``serve`` and ``generate --engine vllm`` start engines from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapterctl.core.engine_rules.limits import LoraLimits, PreparedAdapter, config_rank, lora_limits
from adapterctl.core.engine_rules.vllm import MAX_LORA_RANKS
from adapterctl.errors import UnsupportedError
from tests.helpers import REPO


def prepared(rank: int, name: str = "a", converted: bool = False) -> PreparedAdapter:
    folder = Path("/adapters") / name
    return PreparedAdapter(name, name, folder, folder / "vllm" if converted else folder, "serves", rank)


def test_vllm_takes_the_smallest_allowed_rank_that_holds_the_largest_and_one_empty_slot():
    assert lora_limits("vllm", [prepared(8), prepared(20, "b")]) == LoraLimits(32, 3)
    assert lora_limits("vllm", [prepared(MAX_LORA_RANKS[0])]).max_lora_rank == MAX_LORA_RANKS[0]
    assert lora_limits("vllm", []) == LoraLimits(MAX_LORA_RANKS[0], 1)


def test_vllm_refuses_a_rank_above_its_largest_with_the_reduction_to_run():
    with pytest.raises(UnsupportedError, match="rank 600 is above the largest --max-lora-rank vLLM accepts") as err:
        lora_limits("vllm", [prepared(600)])
    assert f"--rank {MAX_LORA_RANKS[-1]}" in err.value.hint


def test_sglang_takes_the_rank_as_it_is_and_one_slot_per_adapter():
    assert lora_limits("sglang", [prepared(20), prepared(3, "b")]) == LoraLimits(20, 2)
    assert lora_limits("sglang", []) == LoraLimits(1, 1)


def test_config_rank_is_r_or_the_largest_rank_pattern(tmp_path):
    folder = tmp_path / "lora"
    shutil.copytree(REPO / "examples" / "upper-lora", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert config_rank(folder) == cfg["r"]
    cfg["rank_pattern"] = {"q_proj": cfg["r"] * 4}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    assert config_rank(folder) == cfg["r"] * 4


def test_a_prepared_adapter_says_whether_it_was_converted():
    assert not prepared(8).converted and prepared(8, converted=True).converted
    doc = prepared(8, converted=True).to_dict()
    assert doc["converted"] is True and doc["path"] == "/adapters/a/vllm" and doc["folder"] == "/adapters/a"
    assert LoraLimits(16, 2).to_dict() == {"max_lora_rank": 16, "max_loras": 2}
