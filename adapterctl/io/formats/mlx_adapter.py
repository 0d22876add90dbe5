"""MLX-LM adapter folders: ``adapters.safetensors`` + ``adapter_config.json`` (numpy, no torch).

The layout is what mlx-lm's ``tuner.utils.load_adapters`` reads (mlx-lm 0.32): the config holds
``fine_tune_type`` ("lora" | "dora" | "full"), ``num_layers`` (LoRA goes into the last
``num_layers`` entries of ``model.layers``) and ``lora_parameters`` = ``{"rank", "scale",
"dropout", "keys"}`` (one rank and one scale for every module); the weights are named by the mlx
model's parameter paths, ``<module>.lora_a`` (in, r), ``<module>.lora_b`` (r, out) and DoRA's
``<module>.m`` (out,). This module reads and writes the files; the layout rules are core's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.safetensors.header import SafetensorsHeader, read_safetensors_header

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"


def is_mlx_adapter_dir(path: str | Path) -> bool:
    """A folder with adapters.safetensors whose adapter_config.json is mlx-lm's (no peft_type)."""
    p = Path(path)
    if not (p.is_dir() and (p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file()):
        return False
    try:
        doc = json.loads((p / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(doc, dict)
        and "peft_type" not in doc
        and ("lora_parameters" in doc or "fine_tune_type" in doc)
    )


@dataclass(frozen=True)
class MLXAdapterHeader:
    root: Path
    config: dict
    header: SafetensorsHeader


def read_mlx_header(path: str | Path) -> MLXAdapterHeader:
    """Config and safetensors header of an mlx-lm adapter folder (no tensor is read)."""
    root = Path(path)
    if not (root / WEIGHTS_NAME).is_file():
        raise NotFoundError(
            f"{path}: no {WEIGHTS_NAME} in this folder",
            hint="Give the folder mlx_lm.lora wrote (--adapter-path).",
        )
    config = read_json_object(root / CONFIG_NAME, "MLX adapter_config.json")
    return MLXAdapterHeader(root, config, read_safetensors_header(root / WEIGHTS_NAME))


def read_mlx_tensors(head: MLXAdapterHeader) -> dict:
    """Every tensor as a float32 numpy array (bf16/f16 widened exactly)."""
    from adapterctl.io.safetensors.values import read_tensor_f32

    out = {}
    for name in head.header.tensors:
        arr = read_tensor_f32(head.header, name)
        if arr is None:
            raise InvalidAdapterError(
                f"{head.root / WEIGHTS_NAME}: tensor {name!r} has dtype "
                f"{head.header.tensors[name].dtype}, not a float type"
            )
        out[name] = arr
    return out


def write_mlx_files(folder: str | Path, config: dict, tensors: dict) -> Path:
    """Write adapter_config.json and adapters.safetensors (numpy arrays) into ``folder``."""
    import numpy as np
    from safetensors.numpy import save

    folder = Path(folder)
    flat = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    (folder / WEIGHTS_NAME).write_bytes(save(flat, metadata={"format": "mlx"}))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return folder
