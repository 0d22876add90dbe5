"""Rank reduction: the error report equals a dense SVD; the written adapter is exactly the
truncated SVD of each ΔW, as PEFT computes it after loading."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.core.lora.delta import delta_weight
from adapterctl.core.lora.loaded import load_adapter
from adapterctl.core.lora.svd import svd_of_matrix, svd_of_product
from adapterctl.errors import UsageError
from tests.convert_fixtures import make_mutated_run


def _dense_truncation(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    err = float((S[k:] ** 2).sum().sqrt() / (S ** 2).sum().sqrt())
    return (U[:, :k] * S[:k]) @ Vh[:k], err


def _peft_deltas(base, adapter) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    out = {}
    for name, mod in pm.named_modules():
        names = set(getattr(mod, "lora_A", {})) | set(getattr(mod, "lora_embedding_A", {}))
        if hasattr(mod, "get_delta_weight") and "default" in names:
            out[name.removeprefix("base_model.model.")] = mod.get_delta_weight("default").detach()
    return out


@pytest.mark.parametrize("model,kw", [
    ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("gpt2", dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["c_attn", "c_proj"])),
    ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "embed_tokens"],
                   rank_pattern={"q_proj": 6}, alpha_pattern={"embed_tokens": 3})),
])
def test_rank_report_matches_dense_svd_and_peft_loads_truncation(model, kw, tiny_models,
                                                                 peft_adapter, tmp_path):
    src = peft_adapter(model, **kw)
    res = run_convert(ConvertRequest(str(src), str(tmp_path / "o"), rank=3))
    before = load_adapter(src)
    fan = model == "gpt2"
    peft = _peft_deltas(tiny_models[model], tmp_path / "o")
    assert {m.module for m in res.modules} == set(before.modules) == set(peft)
    assert inspect_adapter(tmp_path / "o").usable
    for m in res.modules:
        w = before.modules[m.module]
        dense = delta_weight(w, LayerKind.CONV1D_GPT2 if fan and w.kind is LayerKind.LINEAR else None)
        target, err = _dense_truncation(dense, 3)
        assert m.r_after == 3 and m.r_before == w.r
        assert m.rel_error == pytest.approx(err, rel=1e-4, abs=1e-6)
        got = peft[m.module].double()
        torch.testing.assert_close(got, target, atol=1e-5, rtol=1e-4)


def test_energy_gives_per_module_ranks_in_rank_pattern(peft_adapter, tiny_models, tmp_path):
    src = peft_adapter("llama", r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    res = run_convert(ConvertRequest(str(src), str(tmp_path / "o"), energy=0.6))
    ranks = {m.module: m.r_after for m in res.modules}
    assert len(set(ranks.values())) > 1, ranks  # random factors: ranks differ per module
    out = load_adapter(tmp_path / "o")
    for path, w in out.modules.items():
        assert w.r == ranks[path]
    for m in res.modules:
        assert m.energy >= 0.6 - 1e-9 and m.rel_error == pytest.approx((1 - m.energy) ** 0.5)
    assert all(k in ranks for k in res.rank_pattern)
    peft = _peft_deltas(tiny_models["llama"], tmp_path / "o")
    for path, w in out.modules.items():
        torch.testing.assert_close(peft[path], delta_weight(w), atol=1e-6, rtol=1e-5)


def test_svd_of_product_equals_dense():
    torch.manual_seed(0)
    B, A = torch.randn(70, 6), torch.randn(6, 50)
    svd = svd_of_product(B, A)
    S = torch.linalg.svdvals(B @ A)
    torch.testing.assert_close(svd.S, S[:6], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close((svd.U * svd.S) @ svd.Vh, B @ A, atol=1e-4, rtol=1e-5)


def test_randomised_svd_captures_low_rank_matrix(monkeypatch):
    import adapterctl.core.lora.svd as svd_mod

    monkeypatch.setattr(svd_mod, "DENSE_SVD_LIMIT", 8)
    torch.manual_seed(0)
    M = torch.randn(120, 5) @ torch.randn(5, 90)
    svd = svd_of_matrix(M, 5)
    assert svd.S.numel() == 15  # k + 10 oversamples: the randomised path ran
    assert svd_mod.captured_energy(svd, 5) == pytest.approx(1.0, abs=1e-5)


def test_rank_reduction_of_unconverted_pissa_is_refused(tiny_models, tmp_path):
    run = make_mutated_run(tiny_models["llama"], tmp_path / "run", "pissa", peft_convert=False,
                           r=4, lora_alpha=8, target_modules=["q_proj"])
    with pytest.raises(UsageError, match="mutated base"):
        run_convert(ConvertRequest(str(run.trained), str(tmp_path / "o"), rank=2))
    # converting in the same run is allowed: PiSSA r=4 -> LoRA 2r=8 -> rank 4, close to training
    res = run_convert(ConvertRequest(str(run.trained), str(tmp_path / "o"), init=str(run.init),
                                     rank=8))
    assert res.steps == ["mutated-init", "rank-reduce"] and res.r == 8
    assert all(m.rel_error < 1e-5 for m in res.modules)  # rank 8 is still exact
