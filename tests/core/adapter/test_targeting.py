import math

from adapterctl.core.adapter.config import parse_adapter_config
from adapterctl.core.adapter.targeting import (
    layer_index,
    lora_scaling,
    matches_target,
    pattern_key,
    resolve_rank_alpha,
    select_targets,
)


def cfg(**kw):
    return parse_adapter_config({"peft_type": "LORA", "r": 8, "lora_alpha": 16, **kw})


def test_pattern_first_match_in_dict_order_and_suffix_rule():
    c = cfg(rank_pattern={"layers.0.self_attn.q_proj": 2, "q_proj": 4},
            alpha_pattern={"v_proj": 3})
    assert resolve_rank_alpha(c, "model.layers.0.self_attn.q_proj") == (2, 16)
    assert resolve_rank_alpha(c, "model.layers.1.self_attn.q_proj") == (4, 16)
    # looked up independently (the bug of PEFT <= 0.13 shared one key)
    assert resolve_rank_alpha(c, "model.layers.1.self_attn.v_proj") == (8, 3)
    # a key must match a dot-aligned suffix: "proj" is not a suffix of "q_proj"'s last segment
    assert pattern_key({"proj": 1}, "model.layers.0.q_proj") is None
    # full-path keys with an anchor match (PEFT >= 0.15)
    assert pattern_key({"^model.layers.0.q_proj": 1}, "model.layers.0.q_proj") is not None


def test_rslora_scaling():
    assert lora_scaling(16, 4, False) == 4.0
    assert lora_scaling(16, 4, True) == 16 / math.sqrt(4)


def test_list_targets_are_literal_suffixes():
    c = cfg(target_modules=["q_proj"])
    assert matches_target(c, "model.layers.0.self_attn.q_proj")
    assert not matches_target(c, "model.layers.0.self_attn.xq_proj")


def test_regex_targets_fullmatch():
    c = cfg(target_modules=r".*\.(q|v)_proj")
    assert matches_target(c, "model.layers.0.self_attn.q_proj")
    assert not matches_target(c, "model.layers.0.self_attn.k_proj")


def test_exclude_and_modules_to_save_win():
    c = cfg(target_modules=["q_proj", "lm_head"], exclude_modules=["layers.1.self_attn.q_proj"],
            modules_to_save=["lm_head"])
    assert matches_target(c, "model.layers.0.self_attn.q_proj")
    assert not matches_target(c, "model.layers.1.self_attn.q_proj")
    assert not matches_target(c, "lm_head")


def test_layers_to_transform_filters_every_entry():
    c = cfg(target_modules=["q_proj", "lm_head"], layers_to_transform=[1])
    assert not matches_target(c, "model.layers.0.self_attn.q_proj")
    assert matches_target(c, "model.layers.1.self_attn.q_proj")
    assert not matches_target(c, "lm_head")  # no index: dropped, as PEFT does


def test_layer_index_non_greedy_for_moe_paths():
    assert layer_index("model.layers.3.mlp.experts.7.w1", None) == 3
    assert layer_index("model.layers.3.mlp.experts.7.w1", ["layers"]) == 3


def test_all_linear_excludes_output_embedding():
    c = cfg(target_modules="all-linear")
    names = ["model.layers.0.q_proj", "lm_head", "model.norm"]
    got = select_targets(c, names, linear_paths={"model.layers.0.q_proj", "lm_head"},
                         output_embedding="lm_head")
    assert got == ["model.layers.0.q_proj"]


def test_null_targets_use_architecture_default():
    c = cfg(target_modules=None)
    assert matches_target(c, "model.layers.0.self_attn.q_proj", model_type="llama")
    assert not matches_target(c, "model.layers.0.self_attn.k_proj", model_type="llama")
