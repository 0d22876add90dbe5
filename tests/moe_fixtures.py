"""Tiny random MoE models with fused experts (Mixtral, Qwen3-MoE, gpt-oss) and PEFT
``target_parameters`` adapters on them (PEFT is the oracle). Import the fixtures into a test module:
``from tests.moe_fixtures import moe_models, moe_adapter  # noqa: F401``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import VOCAB, build_model, make_peft_adapter

FAMILIES = ("mixtral", "qwen3_moe", "gpt_oss")
EXPERT_PARAMS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
IDS = [[5, 17, 33, 250, 9, 100, 7, 3, 44, 12]]


def moe_config(family: str):
    """4 experts (2 per token), hidden 64, expert intermediate 48: gate_up_proj (4, 96, 64) and
    down_proj (4, 64, 48); gpt-oss stores them (E, in, out) (is_transposed)."""
    from transformers import GptOssConfig, MixtralConfig, Qwen3MoeConfig

    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    if family == "mixtral":
        return MixtralConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                             **common)
    if family == "qwen3_moe":
        return Qwen3MoeConfig(moe_intermediate_size=48, intermediate_size=96, num_experts=4,
                              num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
                              **common)
    # gpt-oss: one sliding and one full attention layer; plain RoPE (its default is YaRN for 128k)
    return GptOssConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                        sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)


@pytest.fixture(scope="session")
def moe_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe_models")
    return {f: build_model(moe_config(f), root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def moe_adapter(tmp_path_factory, moe_models):
    """Factory: ``moe_adapter("mixtral", r=2)`` -> a PEFT adapter on both expert parameters
    (perturbed by 0.3, so a wrong expert or rank layout moves the logits far beyond 1e-5)."""
    root = tmp_path_factory.mktemp("moe_adapters")

    def make(family: str, seed: int = 0, **kw) -> Path:
        kw.setdefault("target_modules", [])
        kw.setdefault("target_parameters", EXPERT_PARAMS)
        key = hashlib.sha1(json.dumps([family, seed, kw], sort_keys=True).encode()).hexdigest()[:10]
        out = root / f"{family}-{key}"
        if not out.exists():
            make_peft_adapter(moe_models[family], out, seed=seed, perturb=0.3, **kw)
        return out

    return make
