"""Locate the files of an adapter directory (spec section 0).

Local paths only; Hub ids are resolved by :mod:`adapterctl.io.hub.resolve`, which downloads into the
standard cache and then hands the local snapshot folder to these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_NAME = "adapter_model.bin"


@dataclass(frozen=True)
class AdapterFiles:
    """Where an adapter's files are. ``weights`` is None when the folder has no weights file."""

    root: Path
    config: Path
    weights: Path | None
    weights_format: str | None  # "safetensors" | "bin" | None
    source: str  # what the user typed (a path or a Hub id)


def locate_adapter_files(path: str | Path, source: str | None = None) -> AdapterFiles:
    root = Path(path)
    shown = source or str(path)
    if not root.exists():
        raise NotFoundError(
            f"{shown}: no such adapter directory",
            hint="Give the folder that holds adapter_config.json (or a Hub id user/repo).",
        )
    if not root.is_dir():
        raise InvalidAdapterError(
            f"{shown}: is a file, expected an adapter directory",
            hint="Give the folder that holds adapter_config.json, not a file inside it.",
        )
    config = root / CONFIG_NAME
    if not config.is_file():
        hint = "Is this the adapter folder? It should hold adapter_config.json."
        if (root / "config.json").is_file():
            hint = "This looks like a full model (config.json), not an adapter."
        raise NotFoundError(f"{shown}: no {CONFIG_NAME} in this directory", hint=hint)
    st, bin_ = root / SAFETENSORS_WEIGHTS_NAME, root / WEIGHTS_NAME
    if st.is_file():
        return AdapterFiles(root, config, st, "safetensors", shown)
    if bin_.is_file():
        return AdapterFiles(root, config, bin_, "bin", shown)
    return AdapterFiles(root, config, None, None, shown)
