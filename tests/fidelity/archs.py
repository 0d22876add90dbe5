"""Tiny random builds of the architectures the fidelity matrix covers (hidden 64, 2 layers, the
shared 384-token vocabulary), each chosen for a layout that trips a merge or an attach:

- llama: grouped-query attention (q 64x64, k/v 32x64); llama_tied: the same with one shared
  embedding / lm_head table
- mistral, mixtral (MoE experts fused by transformers on load), qwen2 (biases on q/k/v)
- gemma, gemma3 (embeddings scaled by sqrt(hidden), tied heads)
- phi3 (fused qkv_proj and gate_up_proj)
- gpt2 (transformers Conv1D, weights stored (in, out); tied), opt (tied, biases)
- gpt_neox (parallel attention; the checkpoint calls lm_head ``embed_out``), falcon (parallel
  attention, multi-query, tied), bloom (fused query_key_value with biases, tied)
"""

from __future__ import annotations

from tests.conftest import VOCAB, model_configs

COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


def arch_configs() -> dict:
    import transformers as T

    base = model_configs()  # llama, llama_tied, gpt2, qwen2 (the suite's shared fixtures)
    gqa = dict(SMALL, intermediate_size=96, num_key_value_heads=2, max_position_embeddings=128)
    return {
        "llama": base["llama"],
        "llama_tied": base["llama_tied"],
        "mistral": T.MistralConfig(**gqa, tie_word_embeddings=False, **COMMON),
        "qwen2": base["qwen2"],
        "gemma": T.GemmaConfig(**gqa, head_dim=16, **COMMON),
        "gemma3": T.Gemma3TextConfig(**gqa, head_dim=16, sliding_window=16, **COMMON),
        "phi3": T.Phi3Config(**gqa, tie_word_embeddings=False, **COMMON),
        "mixtral": T.MixtralConfig(**gqa, num_local_experts=4, num_experts_per_tok=2,
                                   tie_word_embeddings=False, **COMMON),
        "gpt2": base["gpt2"],
        "opt": T.OPTConfig(**SMALL, ffn_dim=96, word_embed_proj_dim=64, max_position_embeddings=128,
                           **COMMON),
        "gpt_neox": T.GPTNeoXConfig(**SMALL, intermediate_size=96, max_position_embeddings=128,
                                    **COMMON),
        "falcon": T.FalconConfig(**SMALL, **COMMON),
        "bloom": T.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **COMMON),
    }


ARCHS = ["llama", "llama_tied", "mistral", "qwen2", "gemma", "gemma3", "phi3", "mixtral", "gpt2",
         "opt", "gpt_neox", "falcon", "bloom"]
