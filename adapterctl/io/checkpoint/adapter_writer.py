"""Write a PEFT LoRA adapter folder (spec sections 0, 1.1, 3, 4.1 to 4.3, 9.2 and 11.10).

Generic: the caller hands over the config as a dict and the tensors under their checkpoint keys;
this module knows the file format only (key grammar, sorted-keys JSON, safetensors with
``{"format": "pt"}`` metadata; the card's text comes from :mod:`model_card`), never LoRA maths.
Write into the temporary folder of :func:`adapterctl.io.folders.output_dir.write_output_dir` so a failure
leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.folders.adapter_dir import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

PREFIX = "base_model.model."
#: role -> checkpoint suffix (spec 4.2); embeddings use ParameterDict names without ``.weight``
_LINEAR_SUFFIX = {
    "A": ".lora_A.weight",
    "B": ".lora_B.weight",
    "B_bias": ".lora_B.bias",
    "magnitude": ".lora_magnitude_vector",
}
_EMBEDDING_SUFFIX = {
    "A": ".lora_embedding_A",
    "B": ".lora_embedding_B",
    "magnitude": ".lora_magnitude_vector",
}

#: Fields PEFT (0.6 and later) reads, with the defaults LoraConfig would use (spec 11.10).
CONFIG_DEFAULTS: dict = {
    "peft_type": "LORA",
    "task_type": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": True,
    "r": 8,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "target_modules": None,
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "init_lora_weights": True,
    "layers_to_transform": None,
    "layers_pattern": None,
}


def lora_key(module_path: str, role: str, embedding: bool = False) -> str:
    """Checkpoint key of one LoRA tensor of ``module_path`` (spec 4.1/4.2, adapter name removed)."""
    table = _EMBEDDING_SUFFIX if embedding else _LINEAR_SUFFIX
    return PREFIX + module_path + table[role]


def replacement_key(param_path: str) -> str:
    """Checkpoint key of a full replacement tensor (modules_to_save, base biases; spec 4.3)."""
    return PREFIX + param_path


def adapter_config_text(doc: dict) -> str:
    """adapter_config.json as PEFT writes it: defaults filled, ``inference_mode`` true,
    ``runtime_config`` dropped, ``json.dumps(indent=2, sort_keys=True)`` (nested dicts sorted too)."""
    out = {**CONFIG_DEFAULTS, **doc, "inference_mode": True}
    out.pop("runtime_config", None)
    if isinstance(out.get("target_modules"), (set, tuple)):
        out["target_modules"] = sorted(out["target_modules"])
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def write_adapter_files(folder: str | Path, config: dict, tensors: dict, card: str) -> Path:
    """Write adapter_config.json, adapter_model.safetensors and README.md into ``folder``."""
    import torch
    from safetensors.torch import save

    folder = Path(folder)
    if not tensors:
        raise InvalidAdapterError("refusing to write an adapter without tensors")
    flat = _saveable({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)})
    # serialised here and written by Python, so a full disk raises OSError (ENOSPC/EFBIG) that
    # the output helper reports; safetensors' own writer raises an opaque SafetensorError
    (folder / SAFETENSORS_WEIGHTS_NAME).write_bytes(save(flat, metadata={"format": "pt"}))
    (folder / CONFIG_NAME).write_text(adapter_config_text(config), encoding="utf-8")
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def _saveable(tensors: dict) -> dict:
    """The tensors as safetensors accepts them: on the CPU, contiguous, no two sharing storage.
    Only the tensors that need it are copied (PEFT's save_pretrained clones the second and later
    names of a shared storage the same way), so peak memory is not doubled (spec 3)."""
    out, seen = {}, set()
    for key, value in tensors.items():
        t = value.detach().to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()  # a fresh copy, shares nothing
        elif t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()  # tied or sliced from a tensor already in the file
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out
