"""convert on target_parameters (MoE expert) adapters: per-expert rank reduction checked against
PEFT (it loads the output and gives its logits), exact at full rank, an error report that is the
truth, and the conversions it refuses."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.adapter.config import read_adapter_config
from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.errors import UnsupportedError
from tests.helpers import max_abs_diff
from tests.moe_fixtures import IDS, moe_adapter, moe_models  # noqa: F401


def _peft_logits(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(model, str(adapter)).eval()(torch.tensor(IDS)).logits


def _ours(base, adapter):
    from transformers import AutoModelForCausalLM

    from adapterctl.core.runtime.attach import attach_adapter

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    attach_adapter(model, adapter)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_full_rank_is_exact_and_lower_rank_loads_in_peft(family, tmp_path, moe_models,  # noqa: F811
                                                         moe_adapter):  # noqa: F811
    base, adapter = moe_models[family], moe_adapter(family, r=4, lora_alpha=8, use_rslora=True)
    original = _peft_logits(base, adapter)
    same = run_convert(ConvertRequest(str(adapter), str(tmp_path / "r4"), rank=4))
    assert [m.r_after for m in same.modules] == [4] * 4
    assert max_abs_diff(_peft_logits(base, tmp_path / "r4"), original) <= 1e-5
    low = run_convert(ConvertRequest(str(adapter), str(tmp_path / "r1"), rank=1))
    assert read_adapter_config(tmp_path / "r1").r == 1 and all(m.rel_error > 0 for m in low.modules)
    reduced = _peft_logits(base, tmp_path / "r1")  # PEFT reads our packing of the experts
    assert max_abs_diff(_ours(base, tmp_path / "r1"), reduced) <= 1e-5
    assert max_abs_diff(reduced, original) > 1e-4  # rank 1 is not the original


def test_energy_gives_per_parameter_ranks(tmp_path, moe_models, moe_adapter):  # noqa: F811
    adapter = moe_adapter("qwen3_moe", r=4, lora_alpha=8, rank_pattern={"down_proj": 2})
    res = run_convert(ConvertRequest(str(adapter), str(tmp_path / "e"), energy=0.999999))
    assert {m.module.rsplit(".", 1)[1]: m.r_after for m in res.modules} == {
        "gate_up_proj": 4, "down_proj": 2}
    assert max_abs_diff(_peft_logits(moe_models["qwen3_moe"], tmp_path / "e"),
                        _peft_logits(moe_models["qwen3_moe"], adapter)) <= 1e-5


def test_refuses_what_it_cannot_do(tmp_path, moe_adapter):  # noqa: F811
    adapter = moe_adapter("mixtral", r=2, target_modules=["q_proj"])
    with pytest.raises(UnsupportedError, match="module LoRA") as err:
        run_convert(ConvertRequest(str(adapter), str(tmp_path / "x"), rank=1))
    assert err.value.exit_code == 5 and not (tmp_path / "x").exists()
    with pytest.raises(UnsupportedError, match="target_parameters"):
        # the output beside the (dummy) base folder, not inside it: an output never sits in an input
        run_convert(ConvertRequest(str(moe_adapter("mixtral", r=2)), str(tmp_path.with_name(tmp_path.name + "-y")),
                                   to="gguf", base=str(tmp_path)))
