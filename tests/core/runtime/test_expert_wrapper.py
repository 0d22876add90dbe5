"""target_parameters LoRA on fused MoE experts against PEFT's ParamWrapper (the oracle): the same
logits in float32 (<= 1e-5) on tiny Mixtral, Qwen3-MoE and gpt-oss; exact detach; refusals."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from adapterctl.core.runtime.attach import (
    attach_adapter,
    detach,
    row_adapters,
    set_active,
)
from adapterctl.core.lora.loaded import load_adapter
from adapterctl.errors import IncompatibleBaseError, UnsupportedError
from tests.helpers import max_abs_diff
from tests.moe_fixtures import FAMILIES, IDS, moe_adapter, moe_models  # noqa: F401

CASES = {
    "both": dict(r=2, lora_alpha=4),
    "rslora-pattern": dict(r=2, lora_alpha=8, use_rslora=True,
                           rank_pattern={"down_proj": 3}, alpha_pattern={"gate_up_proj": 5}),
    "down-only": dict(r=4, lora_alpha=8, target_parameters=["mlp.experts.down_proj"]),
    "with-attention": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    # PEFT turns all-linear on MoE models into bare target_parameters names (gate_up_proj,
    # down_proj, the router's gate.weight: a 2-D parameter) plus a gate_up_proj rank pattern
    "all-linear": dict(r=2, lora_alpha=4, target_modules="all-linear", target_parameters=None),
}


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _peft_logits(base, adapter):
    from peft import PeftModel

    with torch.no_grad():
        return PeftModel.from_pretrained(_load(base), str(adapter)).eval()(torch.tensor(IDS)).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_peft(family, case, moe_models, moe_adapter):  # noqa: F811
    adapter = moe_adapter(family, **CASES[case])
    model = _load(moe_models[family])
    with torch.no_grad():
        before = model(torch.tensor(IDS)).logits
    report = attach_adapter(model, adapter)
    wanted = {"down-only": 2, "all-linear": len(load_adapter(adapter).experts)}.get(case, 4)
    assert report.modules.get("experts", 0) == wanted  # 2 layers x targeted parameters
    expected = _peft_logits(moe_models[family], adapter)
    with torch.no_grad():
        ours = model(torch.tensor(IDS)).logits
    assert max_abs_diff(expected, before) > 1e-4  # the adapter matters (10x the tolerance)
    assert max_abs_diff(ours, expected) <= 1e-5
    detach(model, "default")
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(IDS)).logits, before)


def test_weighted_and_mixed_rows(moe_models, moe_adapter):  # noqa: F811
    model = _load(moe_models["mixtral"])
    attach_adapter(model, moe_adapter("mixtral", r=2), name="a")
    with torch.no_grad():
        full = model(torch.tensor(IDS)).logits
        set_active(model, {"a": 0.0})
        base = model(torch.tensor(IDS)).logits
        set_active(model, {"a": 1.0})
    assert max_abs_diff(full, base) > 1e-4
    with pytest.raises(UnsupportedError, match="batch row"), row_adapters(model, ["a"]):
        model(torch.tensor(IDS))


def test_refuses_wrong_size(moe_models, moe_adapter):  # noqa: F811
    adapter = moe_adapter("mixtral", r=2)
    model = _load(moe_models["qwen3_moe"])
    with torch.no_grad():
        model.model.layers[0].mlp.experts.down_proj = torch.nn.Parameter(torch.zeros(4, 64, 40))
    with pytest.raises(IncompatibleBaseError, match=r"down_proj: base parameter is \[4, 64, 40\]"):
        attach_adapter(model, adapter)


def test_refuses_nesting_it_cannot_place(tmp_path, moe_models, moe_adapter):  # noqa: F811
    bad = tmp_path / "bad"
    shutil.copytree(moe_adapter("mixtral", r=2), bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["target_parameters"] = ["mlp.experts.down_proj"]  # the file holds two nested wrappers
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="nested LoRA wrapper") as err:
        attach_adapter(_load(moe_models["mixtral"]), bad)
    assert err.value.exit_code == 4


class _Experts(torch.nn.Module):
    """Registers down_proj BEFORE gate_up_proj (transformers' fused experts do the opposite), so
    the names-only guess is wrong and the engine must take the order from the module."""

    def __init__(self) -> None:
        super().__init__()
        self.down_proj = torch.nn.Parameter(torch.randn(3, 8, 6) * 0.3)
        self.gate_up_proj = torch.nn.Parameter(torch.randn(3, 12, 8) * 0.3)

    def forward(self, x):  # every expert, summed: enough to see each expert's delta
        h = torch.einsum("bi,eoi->beo", x, self.gate_up_proj)
        h = torch.nn.functional.silu(h[..., :6]) * h[..., 6:]
        return torch.einsum("bei,eoi->bo", h, self.down_proj)


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Module()
        self.block.experts = _Experts()

    def forward(self, x):
        return self.block.experts(x)


@pytest.mark.parametrize("patterns", [{}, {"down_proj": 1}])  # same ranks: only the model tells
def test_registration_order_from_the_model(tmp_path, patterns):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _Toy().eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        before = base(x)
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=2, lora_alpha=4, target_modules=[], init_lora_weights=False,
        target_parameters=["experts.gate_up_proj", "experts.down_proj"],
        rank_pattern=patterns))
    with torch.no_grad():
        expected = pm(x)
    pm.save_pretrained(str(tmp_path / "toy"))
    report = attach_adapter(base, tmp_path / "toy")
    assert report.modules == {"experts": 2}
    with torch.no_grad():
        assert max_abs_diff(expected, before) > 1e-3
        assert max_abs_diff(base(x), expected) <= 1e-6
