"""An adapter's module paths rewritten to another layout (text-only <-> vision-language,
core/adapter/prefixes.py): the tensors are shared, only the names change."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from adapterctl.core.adapter.prefixes import (
    KeyMapping,
    choose_mapping,
    detect_layout,
    runtime_layout,
    vision_problem,
)
from adapterctl.core.adapter.problems import as_error
from adapterctl.core.lora.loaded import LoadedAdapter


def adapter_paths(la: LoadedAdapter) -> list[str]:
    """Every path the adapter names: LoRA modules, replaced parameters, trainable-token tables."""
    return [*la.modules, *la.replacements, *la.trainable_tokens]


def remap_adapter(la: LoadedAdapter, mapping: KeyMapping) -> LoadedAdapter:
    """``la`` with every path in ``mapping``'s target layout (call :func:`map_to_layout` first:
    a vision path has no counterpart in a text-only layout)."""

    def new(path: str) -> str:
        mapped = mapping.map(path)
        if mapped is None:
            raise ValueError(f"{path} has no counterpart in the {mapping.target.name} layout")
        return mapped

    return replace(
        la,
        modules={new(p): replace(w, path=new(p)) for p, w in la.modules.items()},
        replacements={new(p): t for p, t in la.replacements.items()},
        trainable_tokens={new(p): v for p, v in la.trainable_tokens.items()},
    )


def map_to_layout(
    la: LoadedAdapter, target, base: str, present: Callable[[str], bool] | None = None
) -> tuple[LoadedAdapter, KeyMapping | None]:
    """``la`` in the base's layout ``target`` (a :class:`~adapterctl.core.adapter.prefixes.Layout`)
    and the mapping used (None: the paths stay as they are). Refuses vision modules when the
    base is text-only (exit 6), naming them."""
    paths = adapter_paths(la)
    mapping = choose_mapping(paths, target, present)
    if mapping is None:
        return la, None
    problem = vision_problem(mapping, paths, base)
    if problem:
        raise as_error(problem, la.source)
    return remap_adapter(la, mapping), mapping


def map_to_checkpoint(
    adapters: list[LoadedAdapter], keys: list[str], base: str
) -> tuple[list[LoadedAdapter], list[KeyMapping | None]]:
    """Each adapter in the layout transformers builds from a checkpoint with these ``keys``
    (merge: the checkpoint's own spelling is found from there, prefixes.checkpoint_spelling)."""
    target = runtime_layout(detect_layout(keys))
    pairs = [map_to_layout(ad, target, base) for ad in adapters]
    return [p[0] for p in pairs], [p[1] for p in pairs]
