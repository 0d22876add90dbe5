"""PiSSA / OLoRA conversion to plain LoRA (spec 7) against PEFT's own conversion."""

from __future__ import annotations

import json

import pytest
import torch

from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.errors import InvalidAdapterError, UnsupportedError
from tests.convert_fixtures import load_tensors, make_mutated_run, peft_logits

CASES = {
    "llama-pissa": ("llama", "pissa", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "llama-olora": ("llama", "olora", dict(r=4, lora_alpha=16, target_modules=["k_proj", "o_proj"])),
    "gpt2-pissa": ("gpt2", "pissa", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"])),
    "qwen2-pissa-rslora": ("qwen2", "pissa", dict(r=4, lora_alpha=4, use_rslora=True,
                                                  target_modules=["q_proj", "up_proj"])),
}


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            model, init, kw = CASES[case]
            cache[case] = make_mutated_run(tiny_models[model], tmp_path_factory.mktemp(case),
                                           init, **kw)
        return cache[case]

    return get


def _config(folder):
    return json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_init_conversion_equals_peft_and_reproduces_training(case, runs, tmp_path):
    run = runs(case)
    out = tmp_path / "out"
    res = run_convert(ConvertRequest(str(run.trained), str(out), init=str(run.init)))
    ours, theirs = load_tensors(out), load_tensors(run.peft)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    mine, peft = _config(out), _config(run.peft)
    for field in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "init_lora_weights",
                  "use_rslora", "peft_type", "task_type"):
        assert mine[field] == peft[field], field
    assert res.r == 2 * CASES[case][2]["r"] and inspect_adapter(out).usable
    torch.testing.assert_close(peft_logits(run.base, out), run.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["llama-pissa", "llama-olora", "gpt2-pissa"])
def test_base_recomputation_equals_peft(case, runs, tmp_path):
    run = runs(case)
    out = tmp_path / "out"
    run_convert(ConvertRequest(str(run.trained), str(out), base=str(run.base)))
    ours, theirs = load_tensors(out), load_tensors(run.peft)
    assert sorted(ours) == sorted(theirs)
    for key in ours:  # same LAPACK calls: equal up to rounding
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(peft_logits(run.base, out), run.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra", [
    dict(modules_to_save=["lm_head"]),  # PEFT drops it and its output fails to load
    dict(use_dora=True),  # PEFT drops the magnitudes (wrong outputs)
    dict(target_modules=["q_proj", "embed_tokens"]),  # PEFT drops embedding LoRA
    dict(use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 6}),  # PEFT raises
], ids=["modules_to_save", "dora", "embedding", "rslora-patterns"])
def test_better_than_peft_extras_are_exact(extra, tiny_models, tmp_path):
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) | extra
    run = make_mutated_run(tiny_models["llama"], tmp_path / "run", "pissa", peft_convert=False, **kw)
    for mode in ("init", "base"):
        out = tmp_path / mode
        req = dict(init=str(run.init)) if mode == "init" else dict(base=str(run.base))
        run_convert(ConvertRequest(str(run.trained), str(out), **req))
        assert inspect_adapter(out).usable
        torch.testing.assert_close(peft_logits(run.base, out), run.logits, atol=2e-5, rtol=1e-5)


def test_init_from_other_run_is_refused(runs, tmp_path):
    a, b = runs("llama-pissa"), runs("llama-olora")
    with pytest.raises(InvalidAdapterError, match="no initial weights for module"):
        run_convert(ConvertRequest(str(a.trained), str(tmp_path / "o"), init=str(b.init)))
    assert not (tmp_path / "o").exists()


def test_base_mode_refuses_niter_and_corda(runs, tmp_path):
    run = runs("llama-pissa")
    cfg = _config(run.trained)
    for init in ("pissa_niter_4", "corda"):
        src = tmp_path / init
        src.mkdir()
        (src / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": init}))
        (src / "adapter_model.safetensors").write_bytes(
            (run.trained / "adapter_model.safetensors").read_bytes())
        with pytest.raises(UnsupportedError, match="cannot be recomputed"):
            run_convert(ConvertRequest(str(src), str(tmp_path / "o"), base=str(run.base)))


@pytest.mark.parametrize("init", ["corda", "lora_ga"])
def test_corda_and_lora_ga_convert_with_init_folder(init, runs, tmp_path):
    """Only the config label differs from PiSSA: the conversion is the same concatenation."""
    run = runs("llama-pissa")
    src = tmp_path / init
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({**_config(run.trained),
                                                         "init_lora_weights": init}))
    (src / "adapter_model.safetensors").write_bytes(
        (run.trained / "adapter_model.safetensors").read_bytes())
    run_convert(ConvertRequest(str(src), str(tmp_path / "o"), init=str(run.init)))
    ours, theirs = load_tensors(tmp_path / "o"), load_tensors(run.peft)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and sorted(ours) == sorted(theirs)
    assert _config(tmp_path / "o")["init_lora_weights"] is True


def test_base_recomputation_reads_a_legacy_bin_base(runs, tmp_path):
    from tests.io.checkpoint.test_reader import save_as_bin

    run = runs("llama-pissa")
    run_convert(ConvertRequest(str(run.trained), str(tmp_path / "st"), base=str(run.base)))
    binary = save_as_bin(run.base, tmp_path / "bin")
    run_convert(ConvertRequest(str(run.trained), str(tmp_path / "bin-out"), base=str(binary)))
    ours, want = load_tensors(tmp_path / "bin-out"), load_tensors(tmp_path / "st")
    assert sorted(ours) == sorted(want) and all(torch.equal(ours[k], want[k]) for k in ours)
