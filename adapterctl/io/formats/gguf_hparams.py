"""A whole-model GGUF's hyperparameters from config.json, as llama.cpp's converter writes them for
the architectures ``merge --to gguf`` writes (``conversion/base.py`` ``TextModel.set_gguf_parameters``,
``conversion/llama.py`` ``LlamaModel``, ``conversion/qwen.py`` ``Qwen2Model``/``Qwen3Model``; llama.cpp
as vendored by llama-cpp-python 0.3.36). Other architectures need more (Gemma's norm offsets and
embedding scale, GPT-2's transposed Conv1D, Phi-3's fused projections...) and are refused by
:data:`MODEL_ARCHS` until each is written and compared with llama.cpp's converter.
"""

from __future__ import annotations

import math

from adapterctl.errors import UnsupportedError

#: transformers architectures whose merged model is written as a GGUF (gguf_arch.ARCHS has the rest)
MODEL_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
#: checkpoint tensors llama.cpp's converter drops (``prepare_tensors``)
DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


def _first(cfg: dict, *names: str):
    return next((cfg[n] for n in names if cfg.get(n) is not None), None)


def rope_parameters(cfg: dict) -> dict:
    """transformers 5's ``rope_parameters`` or 4's ``rope_scaling`` + ``rope_theta``, as one dict."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope = dict(rope.get("full_attention", rope))
    if "rope_theta" not in rope and cfg.get("rope_theta") is not None:
        rope["rope_theta"] = cfg["rope_theta"]
    if "rope_type" not in rope and rope.get("type") is not None:
        rope["rope_type"] = rope["type"]
    return rope


def add_hparams(writer, gguf, hf_arch: str, cfg: dict, file_type: int) -> None:
    """The ``<arch>.*`` keys and ``general.file_type`` of a text model."""
    w = writer
    w.add_block_count(_first(cfg, "n_layers", "num_hidden_layers", "n_layer", "num_layers"))
    if (n_ctx := _first(cfg, "max_position_embeddings", "n_ctx", "n_positions")) is not None:
        w.add_context_length(n_ctx)
    w.add_embedding_length(_first(cfg, "hidden_size", "n_embd", "dim"))
    if (n_ff := _first(cfg, "intermediate_size", "n_inner", "hidden_dim")) is not None:
        w.add_feed_forward_length(n_ff)
    n_head = _first(cfg, "num_attention_heads", "n_head", "n_heads")
    w.add_head_count(n_head)
    if (n_kv := _first(cfg, "num_key_value_heads", "n_kv_heads")) is not None:
        w.add_head_count_kv(n_kv)
    rope = rope_parameters(cfg)
    kind = rope.get("rope_type")
    if kind == "linear" and rope.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn" and rope.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in (None, "default", "llama3"):
        raise UnsupportedError(
            f"config.json: rope type {kind!r} is not one merge --to gguf writes",
            hint="Merge to safetensors (no --to) and convert with llama.cpp's convert_hf_to_gguf.py.",
        )
    if rope.get("rope_theta") is not None:
        w.add_rope_freq_base(rope["rope_theta"])
    if (eps := _first(cfg, "rms_norm_eps", "norm_eps")) is not None:
        w.add_layer_norm_rms_eps(eps)
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(file_type)
    if hf_arch in ("LlamaForCausalLM", "MistralForCausalLM"):  # LlamaModel.set_gguf_parameters
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // n_head)


def llama3_rope_factors(cfg: dict):
    """``rope_freqs.weight`` of a Llama 3 rope (``rope_type: llama3``), or None: per frequency
    1 (short wavelengths), ``factor`` (long ones) or the smooth mix between, in float32 (Llama 3.1's
    frequency scaling; ``LlamaModel.generate_extra_tensors``)."""
    import numpy as np

    rope = rope_parameters(cfg)
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    f32 = np.float32
    base = rope.get("rope_theta", 10000.0)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = (f32(1.0) / (f32(base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))).astype(f32)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (f32(old) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=f32)
