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
