"""Format steps of ``convert``: dtype casting and the serving cleanup (spec 3, 4.3)."""

from __future__ import annotations

from dataclasses import replace

import torch

from adapterctl.core.adapter.keys import split_keys
from adapterctl.core.convert.draft import AdapterDraft, view_adapter
from adapterctl.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_draft(draft: AdapterDraft, dtype: str) -> AdapterDraft:
    """Cast every floating tensor to ``dtype``. Steps before this one computed in float32, so
    this is the single rounding to the target dtype."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="Use float32, bfloat16 or float16.")
    target = DTYPES[dtype]
    tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in draft.tensors.items()}
    notes = draft.notes
    if target != torch.float32:
        notes += (f"PEFT upcasts {dtype} adapters to float32 when loading "
                  "(autocast_adapter_dtype=True), so only the file size changes there",)
    return replace(draft, tensors=tensors, steps=draft.steps + (f"dtype={dtype}",), notes=notes)


def strip_for_serving(draft: AdapterDraft) -> AdapterDraft:
    """Remove full-weight extras serving engines reject: vLLM loads only lora_A/lora_B (and
    refuses modules_to_save other than lm_head/embeddings in recent versions), llama.cpp's
    convert_lora_to_gguf fails on any non-LoRA tensor. The adapter then no longer reproduces
    those replaced modules, which is reported tensor by tensor."""
    layout = split_keys({k: tuple(v.shape) for k, v in draft.tensors.items()})
    drop = {key: f"{path} (full weight replacement)" for path, key in layout.replacements.items()}
    drop.update({key: f"{emb} (trainable token rows)" for emb, key in layout.trainable_tokens.items()})
    drop.update({key: f"{key} (training-only VeLoRA vector: the forward does not use it)"
                 for key in layout.training_only})
    tensors = {k: v for k, v in draft.tensors.items() if k not in drop}
    config = dict(draft.config)
    removed = [drop[k] for k in sorted(drop)]
    for field, empty in (("modules_to_save", None), ("trainable_token_indices", None),
                         ("velora_config", None)):
        if config.get(field):
            removed.append(f"config {field}={config[field]!r}")
            config[field] = empty
    if config.get("bias", "none") != "none":
        removed.append(f"config bias={config['bias']!r}")
        config["bias"] = "none"
    out = replace(draft, config=config, tensors=tensors, removed=draft.removed + tuple(removed),
                  steps=draft.steps + ("for-serving",))
    return replace(out, notes=out.notes + tuple(_serving_warnings(out)))


def _serving_warnings(draft: AdapterDraft) -> list[str]:
    view = view_adapter(draft)
    notes = []
    if view.config.use_dora:
        notes.append("DoRA adapters are not supported by vLLM or llama.cpp (kept as is)")
    if any(w.bias is not None for w in view.modules.values()):
        notes.append("lora_B biases (lora_bias=true) are rejected by llama.cpp (kept as is)")
    if any(w.kind == "embedding" for w in view.modules.values()):
        notes.append("embedding LoRA is not supported by llama.cpp (kept as is)")
    return notes
