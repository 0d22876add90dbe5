"""core/merge.py + core/merge_write.py: the streamed merge equals PEFT's merge_and_unload (the
oracle) across layer kinds and variants, and the output loads in transformers."""

from __future__ import annotations

import json

import pytest
import torch

from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.core.merge.write import execute_merge

CASES = {
    "llama_all_linear": ("llama", dict(r=4, target_modules="all-linear")),
    "llama_dora": ("llama", dict(r=4, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)),
    "gpt2_conv1d": ("gpt2", dict(r=4, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    "gpt2_conv1d_dora": ("gpt2", dict(r=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                                      use_dora=True)),
    "llama_embedding": ("llama", dict(r=4, target_modules=["embed_tokens", "q_proj"])),
    "llama_embedding_dora": ("llama", dict(r=4, target_modules=["embed_tokens"], use_dora=True)),
    "qwen2_biases": ("qwen2", dict(r=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True,
                                   bias="all")),
    "llama_modules_to_save": ("llama", dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])),
    "tied_modules_to_save": ("llama_tied", dict(r=4, target_modules=["q_proj"],
                                                modules_to_save=["lm_head"])),
    "tied_trainable_tokens": ("llama_tied", dict(r=4, target_modules=["q_proj"],
                                                 trainable_token_indices=[3, 5, 7])),
    "rslora_patterns": ("llama", dict(r=4, target_modules=["q_proj", "v_proj"], use_rslora=True,
                                      rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3})),
    "layers_to_transform": ("llama", dict(r=4, target_modules=["q_proj", "o_proj"],
                                          layers_to_transform=[1])),
    "pissa_residual": ("llama", dict(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights="pissa")),
    "olora_residual": ("llama", dict(r=4, target_modules=["v_proj"], init_lora_weights="olora")),
}


def peft_merged(base, adapters, dtype=torch.float32):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    pm = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, a in enumerate(adapters[1:], 1):
        pm.load_adapter(str(a), adapter_name=f"a{i}")
    return pm.merge_and_unload(adapter_names=[f"a{i}" for i in range(len(adapters))])


def ours(base, adapters, out, **options):
    device = options.pop("device", "cpu")
    job = plan_merge(base, load_adapters(adapters), MergeOptions(**options))
    return job, execute_merge(job, out, device=device)


def load_out(out, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_peft(case, tiny_models, peft_adapter, tmp_path):
    base, kw = CASES[case]
    adapter = peft_adapter(base, **kw)
    job, result = ours(tiny_models[base], [adapter], tmp_path / "out")
    merged = load_out(tmp_path / "out")
    oracle = peft_merged(tiny_models[base], [adapter])
    assert max_diff(merged, oracle) <= 1e-5
    assert merged.config.tie_word_embeddings == oracle.config.tie_word_embeddings
    assert result.tensors_merged == len(job.plan.touched) > 0


def test_untied_output_writes_lm_head(tiny_models, peft_adapter, tmp_path):
    adapter = peft_adapter("llama_tied", r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    job, _ = ours(tiny_models["llama_tied"], [adapter], tmp_path / "out")
    assert job.plan.untie_embeddings
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in f.keys() and "model.embed_tokens.weight" in f.keys()


def test_bf16_base_within_one_rounding_step(tmp_path, peft_adapter):
    from tests.conftest import build_model, make_peft_adapter, model_configs

    base = build_model(model_configs()["llama"], tmp_path / "bf16", dtype=torch.bfloat16)
    adapter = make_peft_adapter(base, tmp_path / "ad", r=4, target_modules="all-linear")
    job, _ = ours(base, [adapter], tmp_path / "out")
    assert job.plan.dtype == "bfloat16"
    merged, oracle = load_out(tmp_path / "out", None), peft_merged(base, [adapter], torch.bfloat16)
    sm, so = merged.state_dict(), oracle.state_dict()
    for k in so:
        assert sm[k].dtype == torch.bfloat16
        a, b = sm[k].float(), so[k].float()
        ulp = torch.maximum(a.abs(), b.abs()) * 2.0**-7
        assert bool(((a - b).abs() <= ulp).all()), k


def test_dtype_option_rounds_once_from_float32(tiny_models, peft_adapter, tmp_path):
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj"])
    ours(tiny_models["llama"], [adapter], tmp_path / "out", dtype="bfloat16")
    merged = load_out(tmp_path / "out", None)
    oracle = peft_merged(tiny_models["llama"], [adapter])
    for k, v in oracle.state_dict().items():  # fp32 merge, then one rounding to bf16
        assert torch.equal(merged.state_dict()[k], v.to(torch.bfloat16)), k


def test_several_adapters_sum_equals_peft(tiny_models, peft_adapter, tmp_path):
    a = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    b = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj", "o_proj"], use_rslora=True)
    ours(tiny_models["llama"], [a, b], tmp_path / "out")
    assert max_diff(load_out(tmp_path / "out"), peft_merged(tiny_models["llama"], [a, b])) <= 1e-5


def test_several_dora_adapters_equal_peft(tiny_models, peft_adapter, tmp_path):
    a = peft_adapter("llama", r=4, target_modules=["q_proj"], use_dora=True)
    b = peft_adapter("llama", seed=2, r=4, target_modules=["q_proj"], use_dora=True)
    ours(tiny_models["llama"], [a, b], tmp_path / "out")
    assert max_diff(load_out(tmp_path / "out"), peft_merged(tiny_models["llama"], [a, b])) <= 1e-5


def test_weighted_sum_equals_peft_cat(tiny_models, peft_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    b = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    ours(tiny_models["llama"], [a, b], tmp_path / "out", weights=(0.7, -0.3))
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"])),
                                   str(a), adapter_name="a")
    pm.load_adapter(str(b), adapter_name="b")
    pm.add_weighted_adapter(["a", "b"], [0.7, -0.3], "ab", combination_type="cat")  # exact sum
    oracle = pm.merge_and_unload(adapter_names=["ab"])
    assert max_diff(load_out(tmp_path / "out"), oracle) <= 1e-5


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_combinations_apply_peft_merge_utils_to_full_deltas(method, tiny_models, peft_adapter,
                                                            tmp_path):
    from peft.utils import merge_utils
    from safetensors.torch import load_file

    from adapterctl.core.lora.combine import module_generator
    from adapterctl.core.lora.delta import delta_weight

    a = peft_adapter("llama", r=4, target_modules=["q_proj"])
    b = peft_adapter("llama", seed=1, r=4, target_modules=["q_proj"])
    ours(tiny_models["llama"], [a, b], tmp_path / "out", weights=(0.6, 0.4), combination=method,
         density=0.5, seed=3)
    key = "model.layers.1.self_attn.q_proj.weight"
    ads = load_adapters([a, b])
    deltas = [delta_weight(ad.modules[key[:-7]]) for ad in ads]
    torch.set_rng_state(module_generator(3, key).get_state())  # PEFT draws from the global RNG
    expected = getattr(merge_utils, method)(deltas, torch.tensor([0.6, 0.4]), density=0.5)
    base = load_file(str(tiny_models["llama"] / "model.safetensors"))[key]
    got = load_file(str(tmp_path / "out" / "model.safetensors"))[key]
    assert float((got - (base + expected)).abs().max()) <= 1e-6


def test_quantized_4bit_base_is_dequantized(tiny_models, peft_adapter, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_compute_dtype=torch.float32)
    qm = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), quantization_config=q,
                                              dtype=torch.float32, device_map="cpu")
    qm.save_pretrained(str(tmp_path / "q4"))
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    job, _ = ours(tmp_path / "q4", [adapter], tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    # bitsandbytes' dequantization of each weight as one flat tensor, then PEFT's merge (its
    # AVX-512 CPU kernel gets down_proj's 96 inputs wrong: tests/core/merge/test_qlora.py)
    from tests.core.merge.test_qlora import diff, merged_state, oracle_merge

    oracle = oracle_merge(tiny_models["llama"], adapter, "nf4", flat=True)
    assert diff(merged_state(tmp_path / "out"), oracle) <= 1e-5


def test_legacy_bin_sharded_base(tiny_models, peft_adapter, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(tiny_models["llama"] / "model.safetensors"))
    base = tmp_path / "bin"
    base.mkdir()
    (base / "config.json").write_text((tiny_models["llama"] / "config.json").read_text())
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, ks in halves.items():
        torch.save({k: state[k] for k in ks}, base / name)
    (base / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj"])
    ours(base, [adapter], tmp_path / "out")
    assert max_diff(load_out(tmp_path / "out"), peft_merged(tiny_models["llama"], [adapter])) <= 1e-5


def test_sharded_output_and_copied_files(tiny_models, peft_adapter, tmp_path):
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj"])
    job, result = ours(tiny_models["llama"], [adapter], tmp_path / "out", max_shard_size=100_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(result.shards) > 1 and set(index["weight_map"].values()) == set(result.shards)
    assert index["metadata"]["total_size"] == result.bytes_written
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    card = (out / "README.md").read_text()  # the one card writer: a local base is never base_model
    assert "base_model:" not in card and "library_name: transformers" in card and str(adapter) in card
    assert max_diff(load_out(out), peft_merged(tiny_models["llama"], [adapter])) <= 1e-5


def test_greedy_tokens_equal_peft_attached_adapter(tiny_models, peft_adapter, tmp_path):
    """The merged model generates what base + attached adapter generates (PeftModel, unmerged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = peft_adapter("llama", r=4, target_modules="all-linear", perturb=0.5)
    ours(tiny_models["llama"], [adapter], tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    ids = torch.tensor([[0, 5, 17, 42, 99]])
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=2)
    plain = base.generate(input_ids=ids, **kw)
    want = PeftModel.from_pretrained(base, str(adapter)).generate(input_ids=ids, **kw)
    got = load_out(tmp_path / "out").generate(input_ids=ids, **kw)
    assert not torch.equal(plain, want)  # the adapter changes the tokens, so the check means something
    assert torch.equal(want, got)


def test_dry_run_plan_lists_touched_tensors(tiny_models, peft_adapter):
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    job = plan_merge(tiny_models["llama"], load_adapters([adapter]), MergeOptions())
    plan = job.plan.to_dict()
    assert plan["num_touched"] == 4 and plan["num_shards"] == 1
    assert all(t["ops"] == [f"lora:{adapter}"] for t in plan["touched"])
    assert plan["output_bytes"] == (tiny_models["llama"] / "model.safetensors").stat().st_size - \
        (8 + int.from_bytes((tiny_models["llama"] / "model.safetensors").read_bytes()[:8], "little"))


@pytest.mark.parametrize("weight", [0.5, 0.0, 1.0])
def test_weighted_dora_merge_equals_the_attached_model(tiny_models, peft_adapter, tmp_path, weight):
    """attach/generate and merge agree on what a weight means for DoRA (and for plain LoRA)."""
    from adapterctl.core.runtime.attach import attach_adapter
    from adapterctl.core.runtime.model import Placement, load_base

    dora = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    plain = peft_adapter("llama", seed=3, r=2, target_modules=["q_proj", "o_proj"])
    ours(tiny_models["llama"], [dora, plain], tmp_path / "out", weights=(weight, 0.7))
    base = load_base(tiny_models["llama"], Placement(dtype="float32"))
    attach_adapter(base.model, dora, name="d", weight=weight)
    attach_adapter(base.model, plain, name="p", weight=0.7)
    ids = torch.tensor([[0, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        attached = base.model(ids).logits
        merged = load_out(tmp_path / "out")(ids).logits
    assert float((attached - merged).abs().max()) <= 1e-4
