"""A small greedy decoder for ``attach --prompt`` (the generate command has its own richer one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completion:
    prompt: str
    completion: str
    completion_token_ids: list[int]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion,
                "completion_token_ids": self.completion_token_ids}


def greedy_complete(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[Completion]:
    """Greedy decoding, one prompt at a time (no padding effects), stopping at EOS."""
    device = _input_device(model)
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, num_beams=1,
                                 pad_token_id=_pad_id(tokenizer, model))
        new = gen[0, ids.shape[1]:].tolist()
        out.append(Completion(prompt, tokenizer.decode(new, skip_special_tokens=True), new))
    return out


def _pad_id(tokenizer, model) -> int | None:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
