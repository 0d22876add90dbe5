"""Tiny random vision-language models (Llava, Qwen2.5-VL, Gemma-3, Mllama layouts, transformers
5), their text-only extractions (the language model's weights copied into the matching causal
LM), and PEFT adapters renamed between the two layouts: the oracle's side of tests/*/test_vlm*.

The renames here are spelled out by hand on purpose, independent of core/adapter/prefixes.py."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import VOCAB, build_tokenizer

TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
#: the regex PEFT users give to keep LoRA off the vision tower
LANGUAGE_ONLY = r".*language_model.*\.(q_proj|v_proj|o_proj|down_proj)"


def vlm_config(kind: str):
    from transformers import (
        CLIPVisionConfig,
        Gemma3Config,
        LlamaConfig,
        LlavaConfig,
        MllamaConfig,
        Qwen2_5_VLConfig,
    )

    if kind == "llava":
        return LlavaConfig(text_config=LlamaConfig(**TEXT), image_token_id=VOCAB - 1,
                           vision_config=CLIPVisionConfig(
                               hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                               num_attention_heads=2, image_size=16, patch_size=8))
    if kind == "qwen2_5_vl":
        return Qwen2_5_VLConfig(
            text_config={**TEXT, "model_type": "qwen2_5_vl_text",
                         "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
            vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 37, "num_heads": 2,
                           "out_hidden_size": 64, "patch_size": 4, "spatial_merge_size": 1,
                           "temporal_patch_size": 1, "fullatt_block_indexes": [0]},
            image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3)
    if kind == "gemma3":
        return Gemma3Config(
            text_config={**TEXT, "head_dim": 16, "model_type": "gemma3_text", "sliding_window": 16},
            vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 16, "patch_size": 8,
                           "model_type": "siglip_vision_model"},
            mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2,
            eoi_token_index=VOCAB - 3)
    if kind == "mllama":
        return MllamaConfig(
            text_config={**TEXT, "model_type": "mllama_text_model", "cross_attention_layers": [1],
                         "rope_scaling": {"rope_type": "default"}},
            vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                           "num_global_layers": 1, "attention_heads": 2, "image_size": 16,
                           "patch_size": 8, "vision_output_dim": 64,
                           "intermediate_layers_indices": [0], "max_num_tiles": 1,
                           "supported_aspect_ratios": [[1, 1]]},
            image_token_index=VOCAB - 1)
    raise ValueError(kind)


def text_model_for(kind: str, vlm):
    """The causal LM the VLM's language model is an instance of, with its weights."""
    from transformers import (
        Gemma3ForCausalLM,
        LlamaForCausalLM,
        MllamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tc = vlm.config.text_config
    if kind == "llava":
        text = LlamaForCausalLM(tc)
    elif kind == "qwen2_5_vl":  # the same decoder as Qwen2 (M-RoPE equals RoPE on text alone)
        theta = tc.rope_parameters["rope_theta"]
        text = Qwen2ForCausalLM(Qwen2Config(**TEXT, tie_word_embeddings=False,
                                            rope_parameters={"rope_type": "default",
                                                             "rope_theta": theta}))
    elif kind == "gemma3":
        text = Gemma3ForCausalLM(tc)
    else:
        text = MllamaForCausalLM(tc)
    state = {("model." + k[len("model.language_model."):] if k.startswith("model.language_model.")
              else k): v for k, v in vlm.state_dict().items()
             if k.startswith(("model.language_model.", "lm_head."))}
    missing, unexpected = text.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return text


def build_vlm_pair(kind: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(VLM folder, its text-only extraction's folder), both float32 with a tokenizer."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    vlm = AutoModelForImageTextToText.from_config(vlm_config(kind))
    with torch.no_grad():  # larger random weights than the default init, so deltas matter
        for p in vlm.parameters():
            p.normal_(0, 0.05)
    vlm_dir, text_dir = root / kind, root / f"{kind}-text"
    vlm.save_pretrained(str(vlm_dir))
    text_model_for(kind, vlm).save_pretrained(str(text_dir))
    for d in (vlm_dir, text_dir):
        build_tokenizer(d)
    return vlm_dir, text_dir


def load_any(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = json.loads((folder / "config.json").read_text())
    auto = AutoModelForImageTextToText if "vision_config" in cfg else AutoModelForCausalLM
    return auto.from_pretrained(str(folder), dtype=torch.float32).eval()


def make_adapter(base: Path, out: Path, seed: int = 0, **lora_kwargs) -> Path:
    """A PEFT adapter with non-zero weights on ``base`` (a VLM or a text model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(load_any(base), LoraConfig(init_lora_weights=False, **lora_kwargs))
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(str(out))
    return out


def rename_adapter(src: Path, out: Path, old: str, new: str, target_modules) -> Path:
    """A copy of ``src`` whose keys start ``base_model.model.{new}`` where they started
    ``base_model.model.{old}``: the adapter as PEFT needs it on the other layout."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    head = "base_model.model."
    tensors = {(head + new + k[len(head + old):] if k.startswith(head + old) else k): v
               for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["target_modules"] = target_modules
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def peft_logits(base: Path, adapter: Path, ids, merged: bool = False):
    import torch
    from peft import PeftModel

    pm = PeftModel.from_pretrained(load_any(base), str(adapter)).eval()
    model = pm.merge_and_unload() if merged else pm
    with torch.no_grad():
        return model(input_ids=ids).logits


KINDS = ("llava", "qwen2_5_vl", "gemma3")
#: Mllama too where only the VLM is used (its text-only MllamaForCausalLM has a config,
#: mllama_text_model, that transformers' Auto classes do not load)
VLM_KINDS = (*KINDS, "mllama")
#: (old, new) key prefixes after ``base_model.model.``: the language model in each layout
VLM_TO_TEXT = ("model.language_model.", "model.")
TEXT_TO_VLM = ("model.", "model.language_model.")


class VlmModels:
    """Session cache: each kind's VLM and text folders, and PEFT adapters made on them."""

    def __init__(self, root: Path):
        self.root = root
        self._pairs: dict[str, tuple[Path, Path]] = {}
        self._adapters: dict[tuple, Path] = {}

    def pair(self, kind: str) -> tuple[Path, Path]:
        if kind not in self._pairs:
            self._pairs[kind] = build_vlm_pair(kind, self.root / "models")
        return self._pairs[kind]

    def adapter(self, kind: str, on: str = "vlm", seed: int = 0, **lora_kwargs) -> Path:
        key = (kind, on, seed, json.dumps(lora_kwargs, sort_keys=True))
        if key not in self._adapters:
            base = self.pair(kind)[0 if on == "vlm" else 1]
            out = self.root / "adapters" / f"{kind}-{on}-{len(self._adapters)}"
            self._adapters[key] = make_adapter(base, out, seed, **lora_kwargs)
        return self._adapters[key]
