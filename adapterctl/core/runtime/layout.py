"""Attach an adapter trained on a vision-language model to its text-only extraction, or the
reverse: its paths are rewritten to the model's layout first (core/adapter/prefixes.py)."""

from __future__ import annotations

from torch import nn

from adapterctl.core.adapter.prefixes import KeyMapping, detect_layout
from adapterctl.core.lora.loaded import LoadedAdapter
from adapterctl.core.lora.remap import map_to_layout
from adapterctl.core.runtime.fit import base_module_paths


def map_to_model(model: nn.Module, la: LoadedAdapter) -> tuple[LoadedAdapter, KeyMapping | None]:
    """``la`` with paths in ``model``'s layout, and the mapping used (None: none was needed).
    A mapping is used only where it lands more paths on the model's modules than none."""
    paths = base_module_paths(model)

    def present(path: str) -> bool:  # a module, or a parameter of one (replacements)
        return path in paths or path.rpartition(".")[0] in paths

    shown = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return map_to_layout(la, detect_layout(paths), shown, present)
