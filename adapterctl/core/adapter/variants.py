"""LoRA variants whose files differ from plain LoRA's but whose forward is plain LoRA once the
tensors are read right (spec 1.4). Pure Python: inspect reads them from headers, the loader
(core/lora/loaded.py) from tensors, by the same rules.

BD-LoRA (``use_bdlora``, PEFT's ``BdLoraLinearVariant``): on the modules whose path contains one
of ``target_modules_bd_a`` the lora_A factor is block-diagonal, on ``target_modules_bd_b`` lora_B;
PEFT stores only the diagonal blocks stacked, ``(r, in/n)`` for A and ``(out, r/n)`` for B, and its
forward (and merge) equals plain LoRA with the block-diagonal matrix ``block_diag(*W.chunk(n))``.

layer_replication: PEFT rebuilds the decoder's layer list from ``[start, end)`` ranges before
injecting LoRA (copies share the base weights); the saved keys use the new layer indices, so
module ``layers.j`` sits on the base's ``layers.{map[j]}``.
"""

from __future__ import annotations

import re

from adapterctl.core.adapter.config import LoraAdapterConfig
from adapterctl.core.adapter.keys import KeyLayout
from adapterctl.errors import InvalidAdapterError


def bdlora_settings(cfg: LoraAdapterConfig) -> tuple[list[str], list[str], int] | None:
    """(A-block patterns, B-block patterns, number of blocks), or None without BD-LoRA."""
    doc = cfg.raw.get("use_bdlora")
    if not doc:
        return None
    if not isinstance(doc, dict):
        raise InvalidAdapterError(f"use_bdlora must be an object, found {doc!r}"[:200])
    a, b, n = doc.get("target_modules_bd_a") or [], doc.get("target_modules_bd_b") or [], doc.get("nblocks")
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0) or not all(
        isinstance(p, str) for p in [*a, *b]
    ):
        raise InvalidAdapterError(
            f"use_bdlora {doc!r} needs nblocks > 0 and lists of module names"[:300],
            hint="Save the adapter again with PEFT.",
        )
    return list(a), list(b), n


def block_diagonal_factor(cfg: LoraAdapterConfig, path: str) -> tuple[str, int] | None:
    """("A" or "B", number of blocks) when ``path``'s factor is stored as diagonal blocks. PEFT
    matches a pattern anywhere in the module path (``pattern in target_name``)."""
    settings = bdlora_settings(cfg)
    if settings is None:
        return None
    a, b, n = settings
    in_a, in_b = any(p in path for p in a), any(p in path for p in b)
    if in_a and in_b:
        raise InvalidAdapterError(
            f"{path}: use_bdlora makes both lora_A and lora_B block-diagonal",
            hint="PEFT refuses this configuration too.",
        )
    return ("A", n) if in_a else ("B", n) if in_b else None


def full_shape(role: str, shape: tuple, nblocks: int) -> tuple:
    """The block-diagonal matrix's shape from the stored blocks' (rows kept, columns x n)."""
    return (shape[0], shape[1] * nblocks, *shape[2:])


def expand_layout(layout: KeyLayout, cfg: LoraAdapterConfig) -> None:
    """Give block-diagonal factors their full shapes in ``layout`` (what the forward multiplies)."""
    if bdlora_settings(cfg) is None:
        return
    for path, mod in layout.modules.items():
        found = block_diagonal_factor(cfg, path)
        if found and found[0] in mod.shapes and len(mod.shapes[found[0]]) == 2:
            mod.shapes[found[0]] = full_shape(found[0], mod.shapes[found[0]], found[1])


#: no decoder has this many layers: a bound that keeps a hostile layer_replication cheap
MAX_LAYERS = 10_000


def layer_map(raw) -> list[int] | None:
    """The source layer of every new layer, from ``layer_replication`` ([[start, end), ...])."""
    if not raw:
        return None
    if (
        not isinstance(raw, list)
        or not all(
            isinstance(p, list)
            and len(p) == 2
            and all(type(i) is int for i in p)
            and 0 <= p[0] < p[1] <= MAX_LAYERS
            for p in raw
        )
        or sum(p[1] - p[0] for p in raw) > MAX_LAYERS
    ):
        raise InvalidAdapterError(
            f"layer_replication must be a list of [start, end) pairs, found {raw!r}"[:300],
            hint="Save the adapter again with PEFT.",
        )
    return [i for start, end in raw for i in range(start, end)]


_LAYER = re.compile(r"^((?:.*\.)?(?:layers|h)\.)(\d+)(\..+)$")


def base_module_path(cfg: LoraAdapterConfig, path: str) -> str:
    """The base module a (possibly replicated) module path sits on."""
    sources = layer_map(cfg.raw.get("layer_replication"))
    m = _LAYER.match(path) if sources else None
    if sources is None or m is None or int(m.group(2)) >= len(sources):
        return path
    return f"{m.group(1)}{sources[int(m.group(2))]}{m.group(3)}"
