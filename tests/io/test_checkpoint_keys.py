"""Runtime parameter names -> checkpoint keys through transformers' conversion tables."""

from __future__ import annotations

from adapterctl.core.merge.plan import KeyIndex
from adapterctl.io.checkpoint import checkpoint_renames

MIXTRAL_KEYS = ["model.layers.0.block_sparse_moe.gate.weight",
                "model.layers.0.block_sparse_moe.experts.0.w1.weight",
                "model.layers.0.self_attn.q_proj.weight"]


def test_renamings_map_runtime_names_and_fused_experts_are_flagged():
    renamed, fused = checkpoint_renames("mixtral", MIXTRAL_KEYS)
    assert renamed["model.layers.0.mlp.gate.weight"] == "model.layers.0.block_sparse_moe.gate.weight"
    assert fused == {"model.layers.0.block_sparse_moe.experts.0.w1.weight"}


def test_key_index_uses_tables_prefixes_and_aliases():
    index = KeyIndex(MIXTRAL_KEYS, "mixtral")
    assert index.find("model.layers.0.mlp.gate.weight") == "model.layers.0.block_sparse_moe.gate.weight"
    assert index.find("model.layers.0.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert index.find("model.layers.0.mlp.experts.gate_up_proj") is None
    gpt2 = KeyIndex(["h.0.attn.c_attn.weight", "wte.weight"], "gpt2")  # prefix-less old files
    assert gpt2.find("transformer.h.0.attn.c_attn.weight") == "h.0.attn.c_attn.weight"
    gpt2.alias["lm_head.weight"] = "wte.weight"
    assert gpt2.find("lm_head.weight") == "wte.weight"


def test_no_table_means_no_renames():
    assert checkpoint_renames("llama", ["model.embed_tokens.weight"]) == ({}, set())


def test_tables_registered_under_the_class_name_apply():
    """GPTNeoXForCausalLM's embed_out -> lm_head is registered under the class, not the model type:
    the tables come from the model AutoModelForCausalLM builds (a meta skeleton), as on load."""
    keys = ["embed_out.weight", "gpt_neox.embed_in.weight", "gpt_neox.layers.0.attention.dense.weight"]
    renamed, fused = checkpoint_renames({"model_type": "gpt_neox", "num_hidden_layers": 1}, keys)
    assert renamed == {"lm_head.weight": "embed_out.weight"} and not fused
    assert KeyIndex(keys, {"model_type": "gpt_neox"}).find("lm_head.weight") == "embed_out.weight"


def test_unknown_model_type_has_no_tables():
    assert checkpoint_renames({"model_type": "not-a-model", "auto_map": {}}, ["a.weight"]) == ({}, set())
