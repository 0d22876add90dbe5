"""Runtime parameter names -> checkpoint keys through transformers' conversion tables."""

from __future__ import annotations

import pytest

from adapterctl.core.merge.plan import KeyIndex
from adapterctl.io.checkpoint.reader import checkpoint_renames

MIXTRAL_KEYS = ["model.layers.0.block_sparse_moe.gate.weight",
                "model.layers.0.block_sparse_moe.experts.0.w1.weight",
                "model.layers.0.self_attn.q_proj.weight"]


def test_renamings_map_runtime_names_and_fused_experts_are_flagged():
    renamed, fused = checkpoint_renames("mixtral", MIXTRAL_KEYS)
    assert renamed["model.layers.0.mlp.gate.weight"] == "model.layers.0.block_sparse_moe.gate.weight"
    assert fused == {"model.layers.0.block_sparse_moe.experts.0.w1.weight":
                     ["model.layers.0.mlp.experts.gate_up_proj"]}


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
    assert checkpoint_renames("llama", ["model.embed_tokens.weight"]) == ({}, {})


def test_tables_registered_under_the_class_name_apply():
    """GPTNeoXForCausalLM's embed_out -> lm_head is registered under the class, not the model type:
    the tables come from the model AutoModelForCausalLM builds (a meta skeleton), as on load."""
    keys = ["embed_out.weight", "gpt_neox.embed_in.weight", "gpt_neox.layers.0.attention.dense.weight"]
    renamed, fused = checkpoint_renames({"model_type": "gpt_neox", "num_hidden_layers": 1}, keys)
    assert renamed == {"lm_head.weight": "embed_out.weight"} and not fused
    assert KeyIndex(keys, {"model_type": "gpt_neox"}).find("lm_head.weight") == "embed_out.weight"


def test_unknown_model_type_has_no_tables():
    assert checkpoint_renames({"model_type": "not-a-model", "auto_map": {}}, ["a.weight"]) == ({}, {})


def _causal_lm_types_with_tables() -> list[str]:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [mt for mt, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
            if get_checkpoint_conversion_mapping(cls) or get_checkpoint_conversion_mapping(mt)]


def _unplaced(model_type: str) -> list[str] | None:
    """Linear / Embedding weights of ``model_type``'s default model that merge cannot place on
    the checkpoint transformers saves for it (None when the default config does not build)."""
    import torch
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from adapterctl.io.checkpoint.reader import meta_skeleton

    try:
        config = CONFIG_MAPPING[model_type]().to_dict()
        model = meta_skeleton(config)
        saved = revert_weight_conversion(model, dict(model.state_dict()))  # the keys on disk
    except Exception:  # a default config that transformers itself cannot build
        return None
    index = KeyIndex(list(saved), config)
    split = {n for names in index.fused.values() for n in names}  # refused by name (exit 5)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [p for p in (f"{n}.weight" for n, m in model.named_modules()
                        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)))
            if index.find(p) is None and p not in split and not (tied and p == "lm_head.weight")]


@pytest.mark.parametrize("model_type", ["gpt_neox", "mixtral", "gemma3", "granitemoe", "sarvam_moe"])
def test_every_module_maps_onto_a_checkpoint_key(model_type):
    assert _unplaced(model_type) == []


@pytest.mark.matrix
def test_every_causal_lm_with_renames_maps_every_module():
    """All causal LMs transformers renames on load (tables by class or model type): every Linear
    and Embedding weight the engine can wrap maps onto a key of the checkpoint transformers saves,
    or is built from part of a stored tensor, which merge refuses by name."""
    types = _causal_lm_types_with_tables()
    results = {mt: _unplaced(mt) for mt in types}
    built = {mt: r for mt, r in results.items() if r is not None}
    assert len(types) >= 50 and len(built) >= 40, (len(types), len(built))
    assert {mt: r[:3] for mt, r in built.items() if r} == {}


def test_a_module_split_from_a_stored_tensor_is_refused_by_name():
    """sarvam_moe stores query_key_value fused; transformers splits it into q/k/v on load. A
    delta for q_proj alone would go into part of that tensor: refused (exit 5), naming both."""
    from types import SimpleNamespace

    from adapterctl.core.merge.plan import _missing
    from adapterctl.errors import UnsupportedError

    keys = ["model.layers.0.attention.query_key_value.weight", "model.embed_tokens.weight"]
    index = KeyIndex(keys, {"model_type": "sarvam_moe"})
    assert index.find("model.layers.0.self_attn.q_proj.weight") is None
    err = _missing(SimpleNamespace(source="ad"), "LoRA module",
                   "model.layers.0.self_attn.q_proj.weight", index)
    assert isinstance(err, UnsupportedError) and err.exit_code == 5
    assert "query_key_value" in str(err) and "q_proj" in str(err)
