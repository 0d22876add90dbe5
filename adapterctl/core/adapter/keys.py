"""The key grammar of adapter_model.safetensors (spec sections 4.1 to 4.3 and 11.3).

Splits checkpoint keys into LoRA tensors per module and full replacement tensors. Pure Python over
key names and shapes, shared by ``inspect`` (headers only) and the engine (real tensors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIXES = ("base_model.model.", "base_model.")

#: checkpoint suffix -> role of the tensor inside a LoRA module
LORA_SUFFIXES: dict[str, str] = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "B_bias",
    ".lora_embedding_A": "A",
    ".lora_embedding_B": "B",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
    ".lora_diag": "kasa_diag",
}
TRAINABLE_TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"
#: tensors that only training uses: VeLoRA's projection vectors compress the activations PEFT
#: keeps for the backward pass; its forward (and merge) is plain LoRA (peft/tuners/lora/variants.py
#: VeloraLinearVariant, spec 1.4), so the vectors are read past
TRAINING_ONLY_SUFFIXES: dict[str, str] = {".lora_velora_embed": "VeLoRA"}
_LORA_COMPONENT = re.compile(r"(^|\.)lora_[A-Za-z_]+(\.|$)")


def natural_key(key: str) -> list:
    """Sort ``layers.2`` before ``layers.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def strip_prefix(key: str) -> str:
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def module_path_of(raw: str) -> str:
    """Runtime module path: drop ``.base_layer`` infixes (MHA out_proj, nested wrappers)."""
    return raw.replace(".base_layer.", ".").removesuffix(".base_layer")


@dataclass
class ModuleKeys:
    """The checkpoint keys (and shapes) that belong to one LoRA-adapted module."""

    path: str
    embedding: bool = False
    keys: dict[str, str] = field(default_factory=dict)  # role -> checkpoint key
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        a = self.shapes.get("A")
        return a[0] if a else None


@dataclass
class KeyLayout:
    modules: dict[str, ModuleKeys] = field(default_factory=dict)
    #: base parameter path -> checkpoint key, for full replacement tensors (modules_to_save,
    #: biases, saved embeddings)
    replacements: dict[str, str] = field(default_factory=dict)
    #: embedding module path -> checkpoint key of its trainable-token rows
    trainable_tokens: dict[str, str] = field(default_factory=dict)
    #: keys with a lora_ component we cannot place
    unknown: list[str] = field(default_factory=list)
    #: keys only training uses (TRAINING_ONLY_SUFFIXES): no effect on the forward or a merge
    training_only: list[str] = field(default_factory=list)


def split_keys(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None) -> KeyLayout:
    """Group checkpoint keys (name -> shape) by module."""
    layout = KeyLayout()
    dtypes = dtypes or {}
    for key in sorted(shapes, key=natural_key):
        rest = strip_prefix(key)
        role, path = None, None
        for suffix, r in LORA_SUFFIXES.items():
            if rest.endswith(suffix):
                role, path = r, rest[: -len(suffix)]
                break
        if role is not None and path:
            mod_path = module_path_of(path)
            mod = layout.modules.setdefault(mod_path, ModuleKeys(mod_path))
            mod.embedding = mod.embedding or "lora_embedding_" in rest
            mod.keys[role] = key
            mod.shapes[role] = tuple(shapes[key])
            mod.dtypes[role] = dtypes.get(key, "")
        elif rest.endswith(tuple(TRAINING_ONLY_SUFFIXES)):
            layout.training_only.append(key)
        elif rest.endswith(TRAINABLE_TOKENS_SUFFIX):
            layout.trainable_tokens[rest[: -len(TRAINABLE_TOKENS_SUFFIX)]] = key
        elif _LORA_COMPONENT.search(rest):
            layout.unknown.append(key)
        else:
            layout.replacements[module_path_of(rest)] = key
    return layout
