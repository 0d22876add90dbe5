"""The engine against PeftModel.from_pretrained (the oracle): same logits (float32, <= 1e-5) and
the same greedy tokens, over config fields, layer kinds and architectures."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.attach import attach_adapter, attached_adapters, detach
from tests.helpers import max_abs_diff

IDS = torch.tensor([[5, 9, 20, 33, 7, 100, 200, 3, 44, 12]])

CASES = {
    "llama-list": ("llama", dict(r=4, target_modules=["q_proj", "v_proj"])),
    "llama-all-linear-rslora": ("llama", dict(r=4, lora_alpha=8, target_modules="all-linear",
                                              use_rslora=True)),
    "llama-regex": ("llama", dict(r=4, target_modules=r".*\.layers\.1\..*_proj")),
    "llama-exclude": ("llama", dict(r=4, target_modules=["q_proj", "k_proj"],
                                    exclude_modules=["model.layers.0.self_attn.k_proj"])),
    "llama-layers": ("llama", dict(r=4, target_modules=["q_proj", "o_proj"], layers_to_transform=[1],
                                   layers_pattern="layers")),
    "llama-patterns": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                     rank_pattern={"q_proj": 2, "layers.1.mlp.up_proj": 6},
                                     alpha_pattern={"v_proj": 32})),
    "llama-dora": ("llama", dict(r=4, target_modules="all-linear", use_dora=True)),
    "llama-dropout": ("llama", dict(r=4, target_modules=["q_proj"], lora_dropout=0.3)),
    "llama-embedding": ("llama", dict(r=4, target_modules=["embed_tokens", "q_proj"])),
    "llama-embedding-dora": ("llama", dict(r=4, target_modules=["embed_tokens", "v_proj"],
                                           use_dora=True)),
    "llama-modules-to-save": ("llama", dict(r=4, target_modules=["q_proj"],
                                            modules_to_save=["lm_head", "norm"])),
    "llama-tokens": ("llama", dict(r=4, target_modules=["q_proj"], trainable_token_indices=[3, 5, 7])),
    "llama-pissa": ("llama", dict(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")),
    "llama-olora": ("llama", dict(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights="olora")),
    "gpt2-conv1d": ("gpt2", dict(r=4, target_modules=["c_attn", "c_proj", "c_fc"])),
    "gpt2-dora": ("gpt2", dict(r=4, target_modules=["c_attn", "c_proj"], use_dora=True)),
    "gpt2-pissa": ("gpt2", dict(r=4, target_modules=["c_attn"], init_lora_weights="pissa")),
    "gpt2-wte-lora": ("gpt2", dict(r=4, target_modules=["wte", "c_attn"])),
    "qwen2-bias-all": ("qwen2", dict(r=4, target_modules=["q_proj", "k_proj"], bias="all")),
    "qwen2-lora-only": ("qwen2", dict(r=4, target_modules=["q_proj", "v_proj"], bias="lora_only")),
    "qwen2-lora-bias": ("qwen2", dict(r=4, target_modules=["q_proj", "v_proj", "o_proj"],
                                      lora_bias=True)),
    "tied-lora-lm-head": ("llama_tied", dict(r=4, target_modules=["q_proj", "lm_head"])),
    "tied-lora-embed": ("llama_tied", dict(r=4, target_modules=["embed_tokens"])),
    "tied-modules-to-save": ("llama_tied", dict(r=4, target_modules=["q_proj"],
                                                modules_to_save=["lm_head"])),
    "tied-modules-to-save-embed": ("llama_tied", dict(r=4, target_modules=["v_proj"],
                                                      modules_to_save=["embed_tokens"])),
    "tied-lora-both": ("llama_tied", dict(r=4, target_modules=["embed_tokens", "lm_head"])),
    "tied-tokens": ("llama_tied", dict(r=4, target_modules=["v_proj"], trainable_token_indices=[4, 9])),
}


def load_hf(path, dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kw).eval()


def peft_model(base, adapter, **kw):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter), **kw).eval()


def greedy(model, n=4):
    with torch.no_grad():
        out = model.generate(input_ids=IDS[:, :5], attention_mask=torch.ones_like(IDS[:, :5]),
                             do_sample=False, max_new_tokens=n, pad_token_id=2)
    return out[0, 5:].tolist()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_matches_peft(case, tiny_models, peft_adapter):
    base, kwargs = CASES[case]
    adapter = peft_adapter(base, **kwargs)
    ref_model = peft_model(load_hf(tiny_models[base]), adapter)
    ours = load_hf(tiny_models[base])
    before = logits(ours)
    attach_adapter(ours, adapter)
    ref, got = logits(ref_model), logits(ours)
    assert max_abs_diff(got, ref) <= 1e-5
    assert max_abs_diff(before, ref) > 1e-6  # the adapter does something
    assert greedy(ours) == greedy(ref_model)


def test_detach_restores_the_base_exactly(tiny_models, peft_adapter):
    """PiSSA residual + replaced biases + modules_to_save: all undone by detach."""
    model = load_hf(tiny_models["qwen2"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    a = peft_adapter("qwen2", r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    b = peft_adapter("qwen2", r=4, target_modules=["k_proj"], bias="all", modules_to_save=["lm_head"])
    attach_adapter(model, a, name="a")
    attach_adapter(model, b, name="b")
    detach(model, "a")
    detach(model, "b")
    assert attached_adapters(model) == {}
    assert {n: type(m) for n, m in model.named_modules()} == types
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_pissa_niter_uses_full_svd_and_warns(tiny_models, peft_adapter, tmp_path):
    import json
    import shutil

    src = peft_adapter("llama", r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    niter = tmp_path / "niter"
    shutil.copytree(src, niter)
    cfg = json.loads((niter / "adapter_config.json").read_text())
    cfg["init_lora_weights"] = "pissa_niter_4"
    (niter / "adapter_config.json").write_text(json.dumps(cfg))
    ref = peft_model(load_hf(tiny_models["llama"]), src)
    ours = load_hf(tiny_models["llama"])
    report = attach_adapter(ours, niter)
    assert report.init_recomputed == "pissa"
    assert any("full SVD" in w for w in report.warnings)
    assert max_abs_diff(logits(ours), logits(ref)) <= 1e-5


@pytest.mark.parametrize("conv", ["conv1d", "conv2d"])
@pytest.mark.parametrize("dora", [False, True])
def test_conv_layers_match_peft(conv, dora, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    def make():
        torch.manual_seed(0)
        if conv == "conv1d":
            return torch.nn.Sequential(torch.nn.Conv1d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv1d(8, 4, 1))
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 4, 1, bias=False))

    pm = get_peft_model(make(), LoraConfig(r=4, target_modules=["0", "2"], use_dora=dora,
                                           init_lora_weights=False))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    pm.save_pretrained(str(tmp_path))
    x = torch.randn(2, 3, 16) if conv == "conv1d" else torch.randn(2, 3, 16, 16)
    ref = PeftModel.from_pretrained(make(), str(tmp_path)).eval()
    ours = make().eval()
    report = attach_adapter(ours, tmp_path)
    assert sum(report.modules.values()) == 2
    with torch.no_grad():
        assert max_abs_diff(ours(x), ref(x)) <= 1e-5


def test_wrong_architecture_names_modules_and_shapes(tiny_models, peft_adapter):
    from adapterctl.errors import IncompatibleBaseError

    model = load_hf(tiny_models["gpt2"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleBaseError) as info:
        attach_adapter(model, peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"]))
    text = info.value.message
    assert "GPT2LMHeadModel" in text and "transformer.h.0.attn.c_attn" in text
    assert "model.layers.0.self_attn.q_proj: no such module" in text and "lora_A [4, 64]" in text
    assert attached_adapters(model) == {} and all(torch.equal(v, model.state_dict()[k])
                                                  for k, v in state.items())


def test_half_precision_adapter_file_is_upcast_like_peft(tiny_models, peft_adapter, tmp_path):
    """bf16 tensors on disk: PEFT's autocast_adapter_dtype computes in float32; so do we."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = peft_adapter("llama", r=4, target_modules=["q_proj", "embed_tokens"], use_dora=False)
    dst = tmp_path / "bf16"
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()},
              str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    ref = peft_model(load_hf(tiny_models["llama"]), dst)
    ours = load_hf(tiny_models["llama"])
    attach_adapter(ours, dst)
    slot = ours.model.layers[0].self_attn.q_proj.lora["default"]
    assert slot.A.dtype == torch.float32
    assert max_abs_diff(logits(ours), logits(ref)) <= 1e-5
