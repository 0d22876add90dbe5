"""``convert --for ENGINE``: the output is served as trained by the engine (its rules say
``serves``) and is the same adapter: PEFT, the oracle, gives the source's logits with it."""

from __future__ import annotations

import json

import pytest
import torch

from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
from adapterctl.core.engine_rules.check import check_adapters
from adapterctl.errors import UnsupportedError, UsageError
from tests.convert_fixtures import peft_logits
from tests.helpers import invoke


def convert(src, out, base=None, **kw):
    return run_convert(ConvertRequest(str(src), str(out), base=str(base) if base else None, **kw))


def verdict(folder, engine, base):
    return check_adapters([(str(folder), "out")], [engine], (str(base), "base")).results[0]


def same_logits(base, a, b, atol=1e-5):
    la, lb = peft_logits(base, a), peft_logits(base, b)
    assert torch.allclose(la, lb, atol=atol), float((la - lb).abs().max())


@pytest.mark.parametrize("engine, kw", [
    ("sglang", dict(use_rslora=True, lora_alpha=4)),
    ("llama.cpp", dict(use_rslora=True, alpha_pattern={"v_proj": 32})),
    ("lorax", dict(rank_pattern={"v_proj": 2, "model.layers.1.self_attn.q_proj": 6},
                   alpha_pattern={"q_proj": 3})),
    ("mlx", dict(rank_pattern={"v_proj": 2})),
])
def test_scales_the_engine_ignores_are_baked_exactly(engine, kw, peft_adapter, tiny_models,
                                                     tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], **kw)
    assert verdict(src, engine, base).verdict != "serves"
    res = convert(src, tmp_path / "o", for_engine=(engine,))
    assert verdict(tmp_path / "o", engine, base).verdict == "serves"
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["alpha_pattern"] == {}
    assert any("baked" in n or "zero-padded" in n for n in res.notes)
    same_logits(base, src, tmp_path / "o")


def test_an_adapter_the_engine_serves_is_written_bit_for_bit(peft_adapter, tmp_path):
    from safetensors.torch import load_file

    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_rslora=True)
    convert(src, tmp_path / "o", for_engine=("vllm",))
    a, b = load_file(str(src / "adapter_model.safetensors")), load_file(
        str(tmp_path / "o" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_modules_to_save_lm_head_becomes_an_exact_full_rank_lora(peft_adapter, tiny_models,
                                                                 tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    assert verdict(src, "vllm", base).verdict == "refuses"
    res = convert(src, tmp_path / "o", base, for_engine=("vllm",))
    v = verdict(tmp_path / "o", "vllm", base)
    assert v.verdict == "serves" and v.flags == ["--max-lora-rank 64"]  # rank 64 = hidden size
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and "lm_head" in cfg["target_modules"]
    assert "serve with --max-lora-rank 64" in res.notes
    same_logits(base, src, tmp_path / "o", atol=1e-4)


def test_trainable_tokens_become_an_embedding_lora_and_follow_a_tied_head(peft_adapter,
                                                                        tiny_models, tmp_path):
    for name in ("llama", "llama_tied"):
        base = tiny_models[name]
        src = peft_adapter(name, r=4, target_modules=["q_proj"], trainable_token_indices=[3, 9, 200])
        res = convert(src, tmp_path / name, base, for_engine=("vllm",))
        assert verdict(tmp_path / name, "vllm", base).verdict == "serves"
        assert any("3 trainable token rows" in n for n in res.notes)
        assert any("tied" in n for n in res.notes) == (name == "llama_tied")
        same_logits(base, src, tmp_path / name, atol=1e-4)


def test_dora_becomes_lora_exactly_at_full_rank_and_reports_its_error(peft_adapter, tiny_models,
                                                                     tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    full = convert(src, tmp_path / "full", base, rank=64, for_engine=("vllm",))
    assert all(m.rel_error < 1e-6 for m in full.modules)
    same_logits(base, src, tmp_path / "full", atol=1e-4)
    low = convert(src, tmp_path / "low", base, for_engine=("vllm",))
    assert [m.r_after for m in low.modules] == [4] * 4  # default: the module's own rank
    assert all(0 < m.rel_error < 1 for m in low.modules)
    assert any("whole-adapter relative error" in n for n in low.notes)
    half = convert(src, tmp_path / "energy", base, energy=0.9, for_engine=("vllm",))
    assert all(m.energy >= 0.9 for m in half.modules)


def test_dora_needs_the_base_its_own_without_base(peft_adapter, tiny_models, tmp_path):
    """The DoRA weight minus the base: without --base, the base the adapter names (as every
    command's default base); a usage error when it names none."""
    src = peft_adapter("llama", r=4, target_modules=["q_proj"], use_dora=True)
    convert(src, tmp_path / "own", for_engine=("vllm",))
    convert(src, tmp_path / "given", tiny_models["llama"], for_engine=("vllm",))
    assert (tmp_path / "own/adapter_model.safetensors").read_bytes() == (
        tmp_path / "given/adapter_model.safetensors"
    ).read_bytes()
    nameless = _with_base_name(src, tmp_path / "nameless", None)
    with pytest.raises(UsageError, match="needs the base, and adapter_config.json has no base_model_name"):
        convert(nameless, tmp_path / "o", for_engine=("vllm",))
    res = invoke("--json", "convert", nameless, tmp_path / "o", "--for", "vllm")
    assert res.code == 2 and "--base" in res.json["error"]["hint"]


def test_lora_bias_is_refused_naming_the_module_or_dropped_on_request(peft_adapter, tiny_models,
                                                                      tmp_path):
    base = tiny_models["qwen2"]  # q/k/v have biases: the drop is measured against them
    src = peft_adapter("qwen2", r=4, target_modules=["q_proj", "v_proj"], lora_bias=True)
    res = invoke("--json", "convert", src, tmp_path / "o", "--for", "vllm")
    assert res.code == 5 and "lora_B biases on 4 modules" in res.json["error"]["message"]
    assert "--drop-unsupported" in res.json["error"]["hint"]
    out = convert(src, tmp_path / "o", base, for_engine=("vllm",), drop_unsupported=True)
    assert len(out.removed) == 4 and all("relative change" in r for r in out.removed)
    assert verdict(tmp_path / "o", "vllm", base).verdict == "serves"


def test_lorax_gets_zero_lora_in_the_layers_a_module_kind_skips(peft_adapter, tiny_models,
                                                               tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[0])
    assert verdict(src, "lorax", base).verdict == "changes"
    res = convert(src, tmp_path / "o", base, for_engine=("lorax",))
    assert verdict(tmp_path / "o", "lorax", base).verdict == "serves"
    assert any("zero LoRA added in layers [1]" in n for n in res.notes)
    same_logits(base, src, tmp_path / "o")


def test_for_all_is_the_strictest_and_for_serving_its_alias(peft_adapter, tiny_models, tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "embed_tokens"],
                       use_rslora=True, rank_pattern={"v_proj": 2})
    with pytest.raises(UnsupportedError, match="does not adapt this module"):
        convert(src, tmp_path / "a", for_engine=("all",))  # LoRAX/TGI: no embedding LoRA
    res = convert(src, tmp_path / "b", for_serving=True)
    assert any("embed_tokens" in r for r in res.removed)
    report = check_adapters([(str(tmp_path / "b"), "b")], "all", (str(base), "base"))
    assert report.ok, [(r.engine, r.reasons) for r in report.results if r.verdict != "serves"]


def test_usage_errors(peft_adapter, tmp_path):
    src = peft_adapter("llama", r=4, target_modules=["q_proj"])
    res = invoke("--json", "convert", src, tmp_path / "o", "--for", "tensorrt")
    assert res.code == 2 and "unknown engine 'tensorrt'" in res.json["error"]["message"]
    res = invoke("--json", "convert", src, tmp_path / "o", "--drop-unsupported")
    assert res.code == 2 and "only applies to --for" in res.json["error"]["message"]


def _with_base_name(src, folder, name):
    """A copy of the adapter ``src`` whose config names ``name`` as its base (None: no name)."""
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    (folder / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    return folder


def test_for_serving_without_base_uses_the_adapters_own(peft_adapter, tiny_models, tmp_path):
    """SGLang's zero v_proj partner of a q_proj-only adapter takes its shape from the base: the
    one the adapter names (base_model_name_or_path), as every command's default base."""
    base = tiny_models["llama"]
    src = _with_base_name(peft_adapter("llama", r=4, target_modules=["q_proj"]), tmp_path / "a", str(base))
    res = invoke("--json", "convert", "--for-serving", src, tmp_path / "o")
    assert res.code == 0, res.stderr
    assert any("zero LoRA added on" in n and "v_proj" in n for n in res.json["notes"])
    assert verdict(tmp_path / "o", "sglang", base).verdict == "serves"
    same_logits(base, src, tmp_path / "o")
    # the same with --base: the same adapter
    again = invoke("--json", "convert", "--for-serving", "--base", base, src, tmp_path / "b")
    assert again.code == 0, again.stderr
    assert (tmp_path / "o/adapter_model.safetensors").read_bytes() == (
        tmp_path / "b/adapter_model.safetensors"
    ).read_bytes()


def test_for_serving_without_any_base_is_a_usage_error(peft_adapter, tmp_path):
    src = _with_base_name(peft_adapter("llama", r=4, target_modules=["q_proj"]), tmp_path / "a", None)
    res = invoke("--json", "convert", "--for", "sglang", src, tmp_path / "o")
    assert res.code == 2, res.stderr
    msg = res.json["error"]["message"]
    assert "zero LoRA on model.layers.0.self_attn.v_proj" in msg and "no base_model_name_or_path" in msg
    assert "--base BASE" in res.json["error"]["hint"] and not (tmp_path / "o").exists()


def test_what_no_conversion_can_fix_is_refused_up_front(peft_adapter, tmp_path):
    src = peft_adapter("llama", r=4, target_modules=["q_proj"])
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["init_lora_weights"] = "corda"
    bad = tmp_path / "corda"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    res = invoke("--json", "convert", bad, tmp_path / "o", "--for", "vllm")
    assert res.code == 5 and "convert cannot make vllm serve" in res.json["error"]["message"]


def test_dora_on_gpt2_conv1d_layers(peft_adapter, tiny_models, tmp_path):
    """Conv1D stores W as (in, out): the DoRA change is transposed into the LoRA layout."""
    base = tiny_models["gpt2"]
    src = peft_adapter("gpt2", r=4, target_modules=["c_attn", "c_proj"], use_dora=True)
    convert(src, tmp_path / "o", base, rank=64, for_engine=("vllm",))
    same_logits(base, src, tmp_path / "o", atol=1e-4)


def test_a_resized_vocabulary_is_refused(peft_adapter, tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    src = peft_adapter("llama", r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    tensors = load_file(str(src / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lm_head.weight"))
    tensors[key] = torch.cat([tensors[key], tensors[key][:4]])  # 4 new tokens
    bad = tmp_path / "resized"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    save_file(tensors, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    v = verdict(bad, "vllm", tiny_models["llama"])
    assert v.verdict == "refuses" and v.fix is None
    res = invoke("--json", "convert", bad, tmp_path / "o", "--for", "vllm", "--base",
                 tiny_models["llama"])
    assert res.code == 5 and "trained with a resized vocabulary" in res.json["error"]["message"]
    assert "lm_head.weight is [388, 64], the base's [384, 64]" in res.json["error"]["message"]


# ----- LoRAX/TGI rank padding ----------------------------------------------------------------
LORAX_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def lorax_logits(base, adapter, world_size=1):
    """The adapter as LoRAX's loader applies it (server/lorax_server/adapters/lora.py
    LoraWeights.load, utils/sgmv.py pad_rank), re-implemented: module kinds load in
    ADAPTER_LAYERS order, each scaled by lora_alpha / config.r (PEFT 0.4: no rsLoRA), and
    config.r becomes the padded rank of the first loaded kind; the deltas are added to the base."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.convert_fixtures import IDS

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    t = load_file(str(adapter / "adapter_model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    params = dict(model.named_parameters())
    r = cfg["r"]
    for kind in LORAX_ORDER:
        keys = sorted(k for k in t if k.endswith(f".{kind}.lora_A.weight"))
        if not keys:
            continue
        scale = cfg["lora_alpha"] / r
        for ka in keys:
            A, B = t[ka].float(), t[ka.replace("lora_A", "lora_B")].float()
            path = ka.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            with torch.no_grad():
                params[path + ".weight"] += scale * (B @ A)
        rank = t[keys[0]].shape[0]
        low = 8 * world_size
        r = low if rank <= low else -(-rank // 16) * 16
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


@pytest.mark.parametrize("r", [4, 12])
def test_lorax_rank_padding_is_folded_exactly(r, peft_adapter, tiny_models, tmp_path):
    base = tiny_models["llama"]
    src = peft_adapter("llama", r=r, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    for engine in ("lorax", "tgi"):
        assert verdict(src, engine, base).verdict == "changes"
    want = peft_logits(base, src)
    assert not torch.allclose(lorax_logits(base, src), want, atol=1e-4)  # the padding rescales
    res = convert(src, tmp_path / "o", for_engine=("lorax", "tgi"))
    for engine in ("lorax", "tgi"):
        assert verdict(tmp_path / "o", engine, base).verdict == "serves"
    cfg = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 16
    assert any("zero-padded to 16" in n for n in res.notes)
    got = lorax_logits(base, tmp_path / "o")
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    same_logits(base, src, tmp_path / "o")
