"""core/lora/delta.py: the one fold kernel (LoRA, DoRA, lora_B bias) that merge and the engine share."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.lora.delta import fold_lora, fold_lora_bias
from adapterctl.core.lora.loaded import LoraWeights


def _weights(out: int, inn: int, r: int = 3, dora: bool = False, bias: bool = False) -> LoraWeights:
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)
    mag = torch.rand(out, generator=g) + 0.5 if dora else None
    b = torch.randn(out, generator=g) if bias else None
    return LoraWeights("m", LayerKind.LINEAR, A, B, r, 2.0 * r, 2.0, bias=b, magnitude=mag)


@pytest.mark.parametrize("kind", [LayerKind.LINEAR, LayerKind.CONV1D_GPT2])
@pytest.mark.parametrize("weight", [1.0, 0.4])
def test_fold_lora_and_dora_by_the_formulas(kind, weight):
    """LoRA: W + w·s·BA (transposed for Conv1D). DoRA: w of the way to m ⊙ (W+ΔW)/||W+ΔW||,
    the norm over each output row (spec 6.1 to 6.3), written out here independently."""
    out, inn = 6, 5
    W = torch.randn(out, inn) if kind is LayerKind.LINEAR else torch.randn(inn, out)
    lora, dora = _weights(out, inn), _weights(out, inn, dora=True)
    delta = 2.0 * lora.B @ lora.A
    delta = delta if kind is LayerKind.LINEAR else delta.T
    got = fold_lora(W.clone(), W, lora, kind, weight)
    torch.testing.assert_close(got, W + weight * delta, rtol=0, atol=1e-6)
    row_major = (W + delta) if kind is LayerKind.LINEAR else (W + delta).T  # (out, in)
    full = dora.magnitude[:, None] * row_major / row_major.norm(dim=1, keepdim=True)
    full = full if kind is LayerKind.LINEAR else full.T
    got = fold_lora(W.clone(), W, dora, kind, weight)
    torch.testing.assert_close(got, W + weight * (full - W), rtol=1e-6, atol=1e-6)


def test_fold_lora_bias_sits_inside_the_scaling():
    w = _weights(6, 5, bias=True)
    b0 = torch.randn(6)
    torch.testing.assert_close(fold_lora_bias(b0, w, 0.5), b0 + 0.5 * 2.0 * w.bias)
    assert fold_lora_bias(b0, _weights(6, 5), 0.5) is b0  # no lora_B bias: untouched


def test_engine_fold_and_merge_write_the_same_bits(tiny_models, peft_adapter, tmp_path):
    """One kernel: folding attached adapters (weights 0.5 / 0.7) gives bit-identical float32 weights
    and biases to the streamed merge, for DoRA layers and lora_B biases."""
    from adapterctl.core.runtime.attach import attach_adapter, fold, set_active
    from adapterctl.core.runtime.model import Placement, load_base
    from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
    from adapterctl.core.merge.write import execute_merge

    dora = peft_adapter("qwen2", r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    biased = peft_adapter("qwen2", seed=2, r=2, target_modules=["q_proj", "k_proj"], lora_bias=True)
    weights = (0.5, 0.7)
    job = plan_merge(tiny_models["qwen2"], load_adapters([dora, biased]),
                     MergeOptions(weights=weights))
    execute_merge(job, tmp_path / "merged", device="cpu")
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    model = load_base(tiny_models["qwen2"], Placement(dtype="float32"), tokenizer=False).model
    attach_adapter(model, dora, name="d")
    attach_adapter(model, biased, name="b")
    set_active(model, {"d": weights[0], "b": weights[1]})
    fold(model)
    folded = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
              if ".lora." not in k}
    layer = "model.layers.0.self_attn."
    for key in (layer + "v_proj.weight", layer + "q_proj.weight", layer + "q_proj.bias",
                layer + "k_proj.bias"):
        assert torch.equal(folded[key], merged[key]), key
