"""target_parameters from headers (no torch): PEFT's nested ParamWrapper keys mapped to
(module, parameter), per-expert ranks, the fused parameter each LoRA needs, and refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter.config import parse_adapter_config
from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.errors import InvalidAdapterError
from tests.moe_fixtures import FAMILIES, moe_adapter, moe_models  # noqa: F401

CFG = parse_adapter_config({"peft_type": "LORA", "r": 2,
                            "target_parameters": ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]})
P = "base_model.model.model.layers.0.mlp.experts."


def test_nesting_maps_keys_to_parameters():
    shapes = {P + "base_layer.lora_A.weight": (8, 64), P + "base_layer.lora_B.weight": (96, 8),
              P + "lora_A.weight": (8, 48), P + "lora_B.weight": (64, 8),
              "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (2, 64)}
    found, rest, problems = X.split_expert_keys(shapes, CFG)
    assert not problems and list(rest) == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    gate_up = found["model.layers.0.mlp.experts.gate_up_proj"]  # registered first: innermost
    assert gate_up.depth == 1 and gate_up.shapes == {"A": (8, 64), "B": (96, 8)}
    assert found["model.layers.0.mlp.experts.down_proj"].depth == 0
    assert X.expected_param_shape((8, 64), (96, 8), 2, transposed=False) == (4, 96, 64)
    assert X.expected_param_shape((8, 64), (96, 8), 2, transposed=True) == (4, 64, 96)


def test_checkpoint_layouts():
    fused = {"model.layers.0.mlp.experts.gate_up_proj": (4, 64, 96)}
    assert X.locate_param("model.layers.0.mlp.experts.gate_up_proj", fused).fused
    split = {f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight": (48, 64)
             for e in range(4) for w in ("w1", "w3")}
    loc = X.locate_param("model.layers.0.mlp.experts.gate_up_proj", split)
    assert loc.shape == (4, 96, 64) and loc.split[1] == (
        "model.layers.0.block_sparse_moe.experts.1.w1.weight",
        "model.layers.0.block_sparse_moe.experts.1.w3.weight")
    assert X.locate_param("model.layers.0.mlp.experts.down_proj", split) is None


def test_target_parameters_must_be_a_list():
    with pytest.raises(InvalidAdapterError, match="target_parameters"):
        parse_adapter_config({"peft_type": "LORA", "target_parameters": "mlp.experts.down_proj"})


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_per_expert_view(family, moe_models, moe_adapter):  # noqa: F811
    s = inspect_adapter(moe_adapter(family, r=2, lora_alpha=4), base=moe_models[family],
                        check_values=True)
    assert s.usable and s.base.compatible and "target_parameters" in s.config.variants
    mods = {m.name: m for m in s.modules}
    gate_up = mods["model.layers.1.mlp.experts.gate_up_proj"]
    assert (gate_up.kind, gate_up.experts, gate_up.r, gate_up.scaling) == ("experts", 4, 2, 2.0)
    assert gate_up.a_shape == [8, 64] and gate_up.b_shape == [96, 8]
    assert gate_up.base_shape == ([4, 64, 96] if family == "gpt_oss" else [4, 96, 64])
    assert mods["model.layers.0.mlp.experts.down_proj"].delta_norm > 0


def test_inspect_reports_wrong_rank_and_base(tmp_path, moe_adapter, tiny_models):  # noqa: F811
    bad = tmp_path / "bad"
    shutil.copytree(moe_adapter("mixtral", r=2), bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["r"] = 3  # 8 rows are not 3 x E
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    s = inspect_adapter(bad)
    assert not s.usable and any(p.code == "rank_mismatch" and "experts.down_proj" in p.message
                                for p in s.problems)
    s = inspect_adapter(moe_adapter("mixtral", r=2), base=tiny_models["llama"])
    assert not s.base.compatible and s.exit_code == 6  # a dense model has no experts
    assert any(p.code == "module_not_in_base" and "experts.gate_up_proj" in p.message
               for p in s.problems)
