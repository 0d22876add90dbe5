"""Several adapters: active sets, weighted sums, mixed batches (vs PEFT's adapter_names), fold /
unfold exactness, detach, and trainable adapters."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.attach import (
    active_adapters,
    attach_adapter,
    detach,
    fold,
    row_adapters,
    set_active,
    unfold,
)
from adapterctl.errors import UsageError
from tests.core.runtime.test_attach import load_hf, logits, peft_model
from tests.helpers import max_abs_diff

BATCH = torch.tensor([[5, 9, 20, 33, 7, 100], [1, 2, 3, 4, 5, 6], [40, 41, 42, 43, 44, 45],
                      [9, 9, 8, 8, 7, 7]])


@pytest.fixture(scope="module")
def pair(tiny_models, peft_adapter):
    """Two llama adapters on overlapping modules, one with an embedding LoRA."""
    a = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj", "v_proj", "embed_tokens"])
    b = peft_adapter("llama", seed=2, r=2, lora_alpha=4, target_modules=["v_proj", "down_proj"])
    return tiny_models["llama"], a, b


def _peft_two(base, a, b):
    pm = peft_model(load_hf(base), a, adapter_name="a")
    pm.load_adapter(str(b), adapter_name="b")
    return pm.eval()


def _ours_two(base, a, b):
    model = load_hf(base)
    attach_adapter(model, a, name="a")
    attach_adapter(model, b, name="b", activate=False)
    return model


def test_both_active_matches_peft(pair):
    base, a, b = pair
    pm = _peft_two(base, a, b)
    pm.base_model.set_adapter(["a", "b"])
    ours = _ours_two(base, a, b)
    set_active(ours, ["a", "b"])
    assert max_abs_diff(logits(ours, BATCH), logits(pm, BATCH)) <= 1e-5
    pm.base_model.set_adapter("b")
    set_active(ours, "b")
    assert max_abs_diff(logits(ours, BATCH), logits(pm, BATCH)) <= 1e-5


def test_mixed_batch_matches_peft_adapter_names(pair):
    base, a, b = pair
    pm = _peft_two(base, a, b)
    ours = _ours_two(base, a, b)
    rows = ["a", "__base__", "b", "a"]
    with torch.no_grad():
        ref = pm(input_ids=BATCH, adapter_names=rows).logits
    with row_adapters(ours, rows):
        got = logits(ours, BATCH)
    assert max_abs_diff(got, ref) <= 1e-5
    assert ours.model.layers[0].self_attn.v_proj.rows is None  # reset on exit


def test_weighted_sum_equals_scaled_adapter(pair):
    base, a, b = pair
    ours = _ours_two(base, a, b)
    set_active(ours, {"a": 1.0, "b": 0.5})
    got = logits(ours, BATCH)
    # reference: b with its scaling halved, both active
    ref = _ours_two(base, a, b)
    for mod in ref.modules():
        if hasattr(mod, "lora") and "b" in mod.lora:
            mod.lora["b"].scaling *= 0.5
    set_active(ref, ["a", "b"])
    assert max_abs_diff(got, logits(ref, BATCH)) <= 1e-5
    assert active_adapters(ours) == {"a": 1.0, "b": 0.5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fold_then_unfold_is_exact(pair, tiny_models, peft_adapter, dtype):
    base, a, b = pair
    dora = peft_adapter("gpt2", r=4, target_modules=["c_attn"], use_dora=True)
    for base_path, adapters in ((base, {"a": a, "b": b}), (tiny_models["gpt2"], {"d": dora})):
        model = load_hf(base_path, dtype=dtype)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, path in adapters.items():
            attach_adapter(model, path, name=name)
        set_active(model, {n: 0.7 if n == "b" else 1.0 for n in adapters})
        unfolded = logits(model, BATCH)
        assert fold(model) > 0
        folded = logits(model, BATCH)
        tol = 1e-5 if dtype == torch.float32 else 0.05
        assert max_abs_diff(folded, unfolded) <= tol
        with pytest.raises(UsageError):
            set_active(model, list(adapters)[:1])
        unfold(model)
        assert max_abs_diff(logits(model, BATCH), unfolded) == 0.0
        for name in adapters:
            detach(model, name)
        after = model.state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state)


def test_trainable_leaves_only_adapter_weights_with_grad(pair):
    base, a, _ = pair
    model = load_hf(base)
    attach_adapter(model, a, name="a", trainable=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora.a." in n for n in names)
    model.train()
    loss = model(input_ids=BATCH, labels=BATCH).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_names_are_checked(pair):
    import adapterctl

    assert adapterctl.attach_adapter is attach_adapter  # the lazy public API
    base, a, _ = pair
    model = load_hf(base)
    attach_adapter(model, a, name="a")
    with pytest.raises(UsageError, match="already attached"):
        attach_adapter(model, a, name="a")
    with pytest.raises(UsageError, match="no adapter named 'zz'"):
        set_active(model, "zz")
    with pytest.raises(UsageError, match="'zz'"):
        with row_adapters(model, ["a", "zz"]):
            pass
    with pytest.raises(UsageError):
        detach(model, "zz")


def test_mixed_batch_with_saved_modules(tiny_models, peft_adapter):
    """modules_to_save copies follow the row selection (vs PEFT's adapter_names)."""
    base = tiny_models["llama"]
    a = peft_adapter("llama", seed=4, r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    b = peft_adapter("llama", seed=5, r=4, target_modules=["v_proj"], modules_to_save=["lm_head"])
    pm = _peft_two(base, a, b)
    ours = _ours_two(base, a, b)
    rows = ["b", "a", "__base__", "b"]
    with torch.no_grad():
        ref = pm(input_ids=BATCH, adapter_names=rows).logits
    with row_adapters(ours, rows):
        got = logits(ours, BATCH)
    assert max_abs_diff(got, ref) <= 1e-5


def test_mixed_batch_with_token_rows(tiny_models, peft_adapter):
    """Trainable-token rows follow the row selection: each row equals its adapter alone. (PEFT
    raises KeyError here when only one adapter has trainable tokens, so no oracle.)"""
    base = tiny_models["llama_tied"]
    a = peft_adapter("llama_tied", seed=4, r=4, target_modules=["q_proj"])
    b = peft_adapter("llama_tied", seed=5, r=4, target_modules=["v_proj"],
                     trainable_token_indices=[5, 9, 20])
    ours = _ours_two(base, a, b)
    rows = ["b", "a", "__base__", "b"]
    with row_adapters(ours, rows):
        got = logits(ours, BATCH)
    for i, name in enumerate(rows):
        if name == "__base__":
            set_active(ours, [])
        else:
            set_active(ours, name)
        assert max_abs_diff(logits(ours, BATCH[i:i + 1]), got[i:i + 1]) <= 1e-5


def test_trainable_dora_with_dropout_matches_peft_in_train_mode(tiny_models, peft_adapter):
    """Training forward (dropout active, seeded): the same loss as PEFT with is_trainable."""
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                           lora_dropout=0.2)
    pm = peft_model(load_hf(tiny_models["llama"]), adapter, is_trainable=True).train()
    ours = load_hf(tiny_models["llama"])
    attach_adapter(ours, adapter, trainable=True)
    ours.train()
    torch.manual_seed(7)
    ref = pm(input_ids=BATCH, labels=BATCH).loss
    torch.manual_seed(7)
    got = ours(input_ids=BATCH, labels=BATCH).loss
    assert abs(float(got) - float(ref)) <= 1e-5
    got.backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (7, 5)])
def test_fold_by_row_blocks_equals_the_whole_weight_fold(dtype, shape, monkeypatch):
    """The engine's fold (blocks of rows, layers.fold_rows) gives merge's values (fold_lora on the
    whole weight in float32, one rounding) to the last bit of the base dtype: two adapters, one
    at weight 0.3 (a block's matmul may round its last float32 bit unlike the whole one's)."""
    from adapterctl.core.adapter.compat import LayerKind
    from adapterctl.core.runtime import layers
    from adapterctl.core.lora.delta import fold_lora
    from adapterctl.core.lora.loaded import LoraWeights

    monkeypatch.setattr(layers, "FOLD_BLOCK_BYTES", 4 * shape[1] * 3)  # 3 rows a block
    g = torch.Generator().manual_seed(0)
    out_f, in_f = shape
    W = (torch.randn(out_f, in_f, generator=g) * 0.02).to(dtype)
    active = [(LoraWeights("m", LayerKind.LINEAR, torch.randn(4, in_f, generator=g) * 0.1,
                           torch.randn(out_f, 4, generator=g) * 0.1, 4, 8, 2.0, None, None), w)
              for w in (1.0, 0.3)]
    ref = W.float()
    for lw, w in active:
        ref = fold_lora(ref, W.float(), lw, LayerKind.LINEAR, w)
    got = layers.fold_rows(W, active)
    assert got.dtype == dtype and got.shape == W.shape
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got.float(), ref, rtol=eps, atol=eps * 1e-3)
