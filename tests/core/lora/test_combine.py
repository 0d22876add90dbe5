"""core/lora/combine.py: full-delta combinations match PEFT's merge_utils, and adapters combined into a
new adapter load in PEFT and carry exactly the weighted sum of the sources' deltas (rsLoRA and
lora_bias folded in, unlike PEFT's add_weighted_adapter, #3761)."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.lora.combine import combine_adapters, combine_deltas
from adapterctl.core.merge.plan import load_adapters
from adapterctl.core.merge.to_adapter import write_combined_adapter
from adapterctl.errors import UnsupportedError, UsageError
from tests.core.merge.test_merge import max_diff, peft_merged


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_combine_deltas_matches_peft_merge_utils(method):
    from peft.utils import merge_utils

    torch.manual_seed(0)
    deltas = [torch.randn(12, 9) for _ in range(3)]
    weights = [0.5, -0.2, 0.9]
    gen = torch.Generator().manual_seed(11)
    got = combine_deltas(deltas, weights, method, density=0.4, generator=gen)
    torch.manual_seed(11)
    want = getattr(merge_utils, method)(deltas, torch.tensor(weights), density=0.4)
    assert torch.allclose(got, want, atol=1e-6)


def test_linear_combination_is_the_weighted_sum():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(combine_deltas([a, b], [2.0, -1.0]), 2 * a - b)


def _peft_merge_new(base, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def _expected(base, adapters, weights):
    """W0 + Σ w_i (PEFT-merged_i - W0): the exact weighted sum, from the oracle itself."""
    from transformers import AutoModelForCausalLM

    w0 = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    state = {k: v.clone() for k, v in w0.state_dict().items()}
    for ad, w in zip(adapters, weights):
        merged = peft_merged(base, [ad]).state_dict()
        for k in state:
            state[k] += w * (merged[k] - w0.state_dict()[k])
    w0.load_state_dict(state)
    return w0


@pytest.mark.parametrize("method,tol", [("cat", 1e-5), ("svd", 1e-4)])
def test_new_adapter_is_the_exact_weighted_sum(method, tol, tiny_models, peft_adapter, tmp_path):
    a = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_rslora=True, lora_alpha=8)
    b = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj", "o_proj"])
    weights = [0.7, -0.3]
    combined = combine_adapters(load_adapters([a, b]), weights, method, rank=6)
    write_combined_adapter(combined, tmp_path)
    got = _peft_merge_new(tiny_models["llama"], tmp_path)  # PEFT loads what we wrote
    assert max_diff(got, _expected(tiny_models["llama"], [a, b], weights)) <= tol
    assert combined.config["use_rslora"] is False and combined.config["lora_alpha"] == combined.config["r"]


def test_new_adapter_folds_lora_bias_and_conv1d(tiny_models, peft_adapter, tmp_path):
    a = peft_adapter("gpt2", r=4, target_modules=["c_attn"], fan_in_fan_out=True, lora_bias=True)
    b = peft_adapter("gpt2", seed=1, r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    combined = combine_adapters(load_adapters([a, b]), [1.0, 0.5], "cat")
    write_combined_adapter(combined, tmp_path)
    got = _peft_merge_new(tiny_models["gpt2"], tmp_path)
    assert max_diff(got, _expected(tiny_models["gpt2"], [a, b], [1.0, 0.5])) <= 1e-5


def test_ties_to_adapter_has_the_requested_rank(tiny_models, peft_adapter, tmp_path):
    a = peft_adapter("llama", r=4, target_modules=["q_proj"])
    b = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj"])
    combined = combine_adapters(load_adapters([a, b]), [1.0, 1.0], "ties", rank=3, density=0.5)
    assert set(combined.ranks.values()) == {3}
    write_combined_adapter(combined, tmp_path)
    _peft_merge_new(tiny_models["llama"], tmp_path)


def test_dora_and_bad_methods_are_refused(peft_adapter):
    d = load_adapters([peft_adapter("llama", r=4, target_modules=["q_proj"], use_dora=True)])
    with pytest.raises(UnsupportedError, match="DoRA"):
        combine_adapters(d, [1.0], "cat")
    plain = load_adapters([peft_adapter("llama", r=4, target_modules=["q_proj"])])
    with pytest.raises(UsageError, match="density"):
        combine_adapters(plain, [1.0], "ties")
    with pytest.raises(UsageError, match="unknown method"):
        combine_adapters(plain, [1.0], "average")
