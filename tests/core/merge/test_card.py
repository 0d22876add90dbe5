"""The merged model's card (core/merge/card.py, through the one writer io/folders/model_card.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterctl.core.merge.card import merged_card
from adapterctl.io.folders.model_card import split_card


@dataclass
class _Plan:
    base: str
    adapters: list = field(default_factory=lambda: [
        {"source": "./a", "weight": 0.5, "modules": 4, "variants": ["DoRA"]}])
    dtype: str = "bfloat16"
    combination: str = "ties"
    density: float = 0.5
    seed: int = 3


def test_hub_base_is_named_with_the_merge_relation():
    meta, body = split_card(merged_card(_Plan("org/base@v1"), "adapterctl merge x"))
    assert meta == {"library_name": "transformers", "base_model_relation": "merge",
                    "base_model": "org/base", "tags": ["merge"], "pipeline_tag": "text-generation"}
    assert "merging a LoRA adapter into [org/base](https://huggingface.co/org/base)." in body
    assert "1 LoRA adapter(s), deltas computed in float32 and rounded once to bfloat16" in body
    assert "| `./a` | 0.5 | 4 | DoRA |" in body and "ties (density 0.5, seed 3)" in body
    assert "adapterctl merge x" in body


def test_local_base_is_never_base_model(tmp_path):
    card = merged_card(_Plan(str(tmp_path)))
    assert "base_model" not in split_card(card)[0] and str(tmp_path) not in card
