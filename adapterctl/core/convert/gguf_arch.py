"""What llama.cpp calls a base model's tensors, and how its converter rearranges them.

Tensor names come from the ``gguf`` package's own tables (``gguf.get_tensor_name_map``), so every
name llama.cpp knows for an architecture maps. Which gguf architecture a transformers class becomes,
and whether llama.cpp's ``convert_hf_to_gguf.py`` rearranges the weights LoRA targets, is not in
the ``gguf`` package: it is in llama.cpp's ``conversion/`` modules, read for each entry below
(llama.cpp as vendored by llama-cpp-python 0.3.36). An architecture missing here is refused rather
than converted with a guess, because a missed rearrangement gives a file llama.cpp loads and runs
with wrong outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import UnsupportedError


@dataclass(frozen=True)
class ArchRule:
    gguf_arch: str  # gguf.MODEL_ARCH_NAMES value, written as general.architecture
    #: conversion/llama.py ``LlamaModel.permute``: q_proj/k_proj rows are reordered from HF's
    #: rotate-half rotary layout to llama.cpp's interleaved one (undo_permute = True)
    qk_permute: bool = False
    #: conversion/gemma.py Gemma3Model: token_embd rows past the tokenizer's vocabulary are cut
    trims_vocab: bool = False


#: transformers ``architectures[0]`` -> how llama.cpp converts it (conversion/<file>.py, class).
ARCHS: dict[str, ArchRule] = {
    "LlamaForCausalLM": ArchRule("llama", qk_permute=True),  # llama.py LlamaModel
    "MistralForCausalLM": ArchRule("llama", qk_permute=True),  # llama.py LlamaModel
    "Qwen2ForCausalLM": ArchRule("qwen2"),  # qwen.py Qwen2Model
    "Qwen3ForCausalLM": ArchRule("qwen3"),  # qwen.py Qwen3Model
    "GemmaForCausalLM": ArchRule("gemma"),  # gemma.py GemmaModel (only norms change: +1)
    "Gemma2ForCausalLM": ArchRule("gemma2"),  # gemma.py Gemma2Model (norms +1)
    "Gemma3ForCausalLM": ArchRule("gemma3", trims_vocab=True),  # gemma.py Gemma3Model
    "Phi3ForCausalLM": ArchRule("phi3"),  # phi.py Phi3MiniModel (fused qkv/gate_up kept fused)
    "GPT2LMHeadModel": ArchRule("gpt2"),  # gpt2.py GPT2Model (Conv1D (in,out) -> (out,in))
    "Starcoder2ForCausalLM": ArchRule("starcoder2"),  # starcoder.py StarCoder2Model
    "Olmo2ForCausalLM": ArchRule("olmo2"),  # olmo.py Olmo2Model
    "StableLmForCausalLM": ArchRule("stablelm"),  # stablelm.py (only q/k norms are stacked)
}


@dataclass(frozen=True)
class BaseFacts:
    """What the conversions need to know about the base model, from config.json and headers."""

    path: str
    hf_arch: str
    rule: ArchRule
    n_layers: int
    n_head: int
    n_head_kv: int
    keys: frozenset[str]  # checkpoint tensor names (empty for legacy .bin bases)
    tied: bool  # the checkpoint has no lm_head: llama.cpp's output is token_embd
    config: dict


def _int(config: dict, *names: str, default: int | None = None) -> int:
    for n in names:
        if isinstance(config.get(n), int):
            return config[n]
    if default is None:
        raise UnsupportedError(f"base config.json has none of {', '.join(names)}")
    return default


def read_base_facts(base: str | Path, shown: str | None = None) -> BaseFacts:
    """Read config.json (and safetensors headers when present) of the base model folder."""
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_headers

    files = locate_model_files(base, shown)
    text_config = files.config.get("text_config")
    cfg = text_config if isinstance(text_config, dict) else files.config
    archs = files.config.get("architectures") or []
    hf_arch = archs[0] if archs and isinstance(archs[0], str) else str(files.model_type)
    rule = ARCHS.get(hf_arch)
    if rule is None:
        raise UnsupportedError(
            f"{shown or base}: architecture {hf_arch!r} is not one adapterctl converts to/from "
            "llama.cpp GGUF adapters",
            hint="Supported: " + ", ".join(sorted(ARCHS)) + ". Others may need tensor "
            "rearrangements llama.cpp's converter applies; use its convert_lora_to_gguf.py.",
        )
    keys = frozenset(read_model_headers(files)) if files.weights_format == "safetensors" else frozenset()
    tied = (
        bool(cfg.get("tie_word_embeddings", True))
        if not keys
        else not any(k.endswith("lm_head.weight") for k in keys)
    )
    n_head = _int(cfg, "num_attention_heads", "n_head")
    return BaseFacts(
        str(shown or base),
        hf_arch,
        rule,
        _int(cfg, "num_hidden_layers", "n_layer"),
        n_head,
        _int(cfg, "num_key_value_heads", default=n_head),
        keys,
        tied,
        cfg,
    )


def tensor_name_map(facts: BaseFacts):
    from adapterctl.io.formats.gguf_adapter import import_gguf

    gguf = import_gguf()
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == facts.rule.gguf_arch)
    return gguf, gguf.get_tensor_name_map(arch, facts.n_layers)


def gguf_name(facts: BaseFacts, module_path: str) -> str | None:
    """GGUF base tensor name (``blk.0.attn_q.weight``) of a transformers module path."""
    _, names = tensor_name_map(facts)
    return names.get_name(module_path + ".weight", try_suffixes=(".weight",))


def gguf_tensor_kind(facts: BaseFacts, gguf_base: str) -> str:
    """'token_embd', 'output', 'q', 'k' or 'other' for a GGUF base tensor name."""
    stem = gguf_base.removesuffix(".weight")
    if stem == "token_embd":
        return "token_embd"
    if stem == "output":
        return "output"
    tail = stem.rsplit(".", 1)[-1]
    return {"attn_q": "q", "attn_k": "k"}.get(tail, "other")


def permute_rows(t, n_head: int, n_head_kv: int | None, inverse: bool = False):
    """llama.cpp's ``LlamaModel.permute`` on the rows of ``t`` (out, ...): within each head, the
    rotate-half halves [x0..x(d/2-1) | x(d/2)..] are interleaved as pairs. ``inverse`` undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rest = tuple(t.shape[1:])
    half = t.shape[0] // n_head // 2
    if inverse:
        return t.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(t.shape)
    return t.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(t.shape)
