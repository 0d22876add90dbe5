"""merge with target_parameters (MoE expert) LoRA against PEFT's merge_and_unload (the oracle):
transformers loads the merged checkpoint and its float32 logits match (<= 1e-5), whether the
checkpoint stores experts fused (gpt-oss) or one tensor per expert (Mixtral, Qwen3-MoE)."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.core.merge.write import execute_merge
from adapterctl.errors import UnsupportedError
from tests.helpers import max_abs_diff
from tests.moe_fixtures import FAMILIES, IDS, moe_adapter, moe_models  # noqa: F401

TOUCHED = {  # layer 0's stored tensors that change
    "mixtral": {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"
                for e in range(4) for w in ("w1", "w2", "w3")},
    "qwen3_moe": {f"model.layers.0.mlp.experts.{e}.{w}.weight"
                  for e in range(4) for w in ("gate_proj", "up_proj", "down_proj")},
    "gpt_oss": {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"},
}


def _logits(path, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        return model.eval()(torch.tensor(IDS)).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_matches_peft(family, tmp_path, moe_models, moe_adapter):  # noqa: F811
    adapter = moe_adapter(family, r=2, lora_alpha=4, target_modules=["q_proj"])
    job = plan_merge(moe_models[family], load_adapters([adapter]), MergeOptions())
    touched = {t["key"] for t in job.plan.touched if ".layers.0." in t["key"]}
    assert touched == TOUCHED[family] | {"model.layers.0.self_attn.q_proj.weight"}
    execute_merge(job, tmp_path / "merged")
    expected = _logits(moe_models[family], adapter)
    assert max_abs_diff(expected, _logits(moe_models[family])) > 1e-4  # the merge matters
    assert max_abs_diff(_logits(tmp_path / "merged"), expected) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_all_linear_matches_peft(family, tmp_path, moe_models, moe_adapter):  # noqa: F811
    """all-linear: bare target_parameters names, a 2-D router weight, a gate_up_proj pattern."""
    adapter = moe_adapter(family, r=2, lora_alpha=4, target_modules="all-linear",
                          target_parameters=None)
    execute_merge(plan_merge(moe_models[family], load_adapters([adapter]), MergeOptions()),
                  tmp_path / "merged")
    assert max_abs_diff(_logits(tmp_path / "merged"), _logits(moe_models[family], adapter)) <= 1e-5


def test_weighted_merge_equals_weighted_attach(tmp_path, moe_models, moe_adapter):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from adapterctl.core.runtime.attach import attach_adapter

    adapter = moe_adapter("mixtral", r=2)
    execute_merge(plan_merge(moe_models["mixtral"], load_adapters([adapter]),
                             MergeOptions(weights=[0.5])), tmp_path / "half")
    model = AutoModelForCausalLM.from_pretrained(str(moe_models["mixtral"]), dtype=torch.float32)
    attach_adapter(model.eval(), adapter, weight=0.5)
    with torch.no_grad():
        attached = model(torch.tensor(IDS)).logits
    assert max_abs_diff(_logits(tmp_path / "half"), attached) <= 1e-5


def test_refuses_other_combinations(moe_models, moe_adapter):  # noqa: F811
    adapter = moe_adapter("mixtral", r=2)
    with pytest.raises(UnsupportedError, match="--combination ties") as err:
        plan_merge(moe_models["mixtral"], load_adapters([adapter, adapter]),
                   MergeOptions(combination="ties", density=0.5))
    assert err.value.exit_code == 5
