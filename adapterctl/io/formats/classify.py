"""What a local path holds: a PEFT adapter folder, a transformers model folder, a llama.cpp GGUF
file, an MLX-LM adapter folder, or none of these. The one rule every command uses to tell an
adapter argument from a base argument, and a foreign format from PEFT's (stdlib only).

An adapter_config.json makes a folder an adapter even beside a config.json: transformers does the
same (``find_adapter_config_file``: such a folder loads its base from base_model_name_or_path).
"""

from __future__ import annotations

from pathlib import Path

from adapterctl.io.folders.adapter_dir import CONFIG_NAME as ADAPTER_CONFIG
from adapterctl.io.folders.model_card import ADAPTER, MODEL
from adapterctl.io.formats.gguf_header import is_gguf_file
from adapterctl.io.formats.mlx_adapter import is_mlx_adapter_dir

GGUF, MLX = "gguf", "mlx"
__all__ = ["ADAPTER", "GGUF", "MLX", "MODEL", "classify_folder"]


def classify_folder(path: str | Path) -> str | None:
    """``"adapter"``, ``"model"``, ``"gguf"``, ``"mlx"``, or None (missing, or none of these)."""
    p = Path(path).expanduser()
    if p.is_file():
        return GGUF if is_gguf_file(p) else None
    if not p.is_dir():
        return None
    if is_mlx_adapter_dir(p):  # mlx-lm's adapter_config.json has no peft_type
        return MLX
    if (p / ADAPTER_CONFIG).is_file():
        return ADAPTER
    if (p / "config.json").is_file():
        return MODEL
    return None
