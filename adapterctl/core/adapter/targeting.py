"""Which modules get LoRA, with which rank, alpha and scaling (spec sections 1.5, 1.6 and 2).

Mirrors PEFT 0.21 (our test oracle). Pure Python over module paths, so ``inspect`` can use it
without torch; the engine passes the base model's module names and layer kinds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from adapterctl.core.adapter.config import LoraAdapterConfig

#: PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the common causal LMs: used when
#: target_modules is null.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "falcon": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"],
    "olmo": ["q_proj", "v_proj"],
    "olmo2": ["q_proj", "v_proj"],
    "granite": ["q_proj", "v_proj"],
}


def pattern_key(patterns: dict, path: str) -> str | None:
    """First key (dict order) whose regex matches a dot-aligned suffix of ``path`` (PEFT >= 0.15)."""
    for key in patterns:  # keys were checked to compile when the config was parsed
        if re.match(rf"(.*\.)?({key})$", path):
            return key
    return None


def resolve_rank_alpha(cfg: LoraAdapterConfig, path: str) -> tuple[int, float]:
    """r and alpha for module ``path``; rank_pattern and alpha_pattern are looked up independently."""
    kr = pattern_key(cfg.rank_pattern, path)
    ka = pattern_key(cfg.alpha_pattern, path)
    r = int(cfg.rank_pattern[kr]) if kr is not None else cfg.r
    alpha = cfg.alpha_pattern[ka] if ka is not None else cfg.lora_alpha
    return r, alpha


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """LoRA: alpha / r (Hu et al. 2021); rsLoRA: alpha / sqrt(r) (Kalajdzievski 2023). Spec 2."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def module_scaling(cfg: LoraAdapterConfig, path: str) -> tuple[int, float, float]:
    r, alpha = resolve_rank_alpha(cfg, path)
    return r, alpha, lora_scaling(alpha, r, cfg.use_rslora)


def is_excluded(cfg: LoraAdapterConfig, path: str) -> bool:
    ex = cfg.exclude_modules
    if not ex:
        return False
    if isinstance(ex, str):
        return re.fullmatch(ex, path) is not None
    return any(path == e or path.endswith("." + e) for e in ex)


def in_modules_to_save(cfg: LoraAdapterConfig, path: str) -> bool:
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", path) for m in (cfg.modules_to_save or []))


def layer_index(path: str, layers_pattern: list[str] | None) -> int | None:
    """The layer index PEFT takes from ``path`` (the non-greedy rule of PEFT >= 0.20)."""
    if layers_pattern:
        for pattern in layers_pattern:
            m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", path)
            if m:
                return int(m.group("idx"))
        return None
    m = re.match(r".*?\.[^.]*\.(\d+)\.", path)
    return int(m.group(1)) if m else None


def matches_target(
    cfg: LoraAdapterConfig, path: str, all_linear: set[str] | None = None, model_type: str | None = None
) -> bool:
    """PEFT's per-module decision (spec 1.6). ``all_linear`` is the resolved set for 'all-linear'."""
    if not path or is_excluded(cfg, path) or in_modules_to_save(cfg, path):
        return False
    tm = cfg.target_modules
    if tm is None:
        tm = DEFAULT_TARGETS.get(model_type or "")
        if tm is None:
            return False
    if isinstance(tm, str):
        if tm.lower() == "all-linear":
            return path in (all_linear or set())
        return re.fullmatch(tm, path) is not None
    if not any(path == t or path.endswith("." + t) for t in tm):
        return False
    if cfg.layers_to_transform is not None:
        idx = layer_index(path, cfg.layers_pattern)
        return idx is not None and idx in cfg.layers_to_transform
    return True


def select_targets(
    cfg: LoraAdapterConfig,
    module_paths: Iterable[str],
    linear_paths: set[str] | None = None,
    output_embedding: str | None = None,
    model_type: str | None = None,
) -> list[str]:
    """All module paths PEFT would put LoRA on, in model order."""
    all_linear = None
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear":
        all_linear = set(linear_paths or set()) - ({output_embedding} if output_embedding else set())
    return [p for p in module_paths if matches_target(cfg, p, all_linear, model_type)]
