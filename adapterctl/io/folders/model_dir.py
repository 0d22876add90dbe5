"""A base model checkpoint folder: config.json and its weight files, read without torch.

Handles single and sharded safetensors (``model.safetensors.index.json``) and legacy ``.bin``
shards. Index entries that point outside the folder are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.safetensors.header import SafetensorsHeader, read_safetensors_header

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


@dataclass(frozen=True)
class ModelFiles:
    root: Path
    config: dict
    weight_files: tuple[Path, ...]
    weights_format: str  # "safetensors" | "bin"
    #: tensor name -> file, from the index (sharded) or filled when headers are read
    weight_map: dict[str, Path]
    index_metadata: dict

    @property
    def model_type(self) -> str | None:
        mt = self.config.get("model_type")
        return mt if isinstance(mt, str) else None


def _inside(root: Path, name: object, index_path: Path) -> Path:
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise InvalidAdapterError(
            f"{index_path}: weight_map entry {name!r} points outside the model folder",
            hint="The index is corrupt or malicious; regenerate it.",
        )
    p = root / name
    if p.is_symlink() and not any(p.resolve().is_relative_to(ok) for ok in symlink_roots(root)):
        raise InvalidAdapterError(f"{index_path}: {name} is a symlink out of the model folder")
    return p


def symlink_roots(root: Path) -> list[Path]:
    """Where a shard symlink may point: the folder itself or, for a Hugging Face cache snapshot
    (``models--x--y/snapshots/<sha>/``), that repo's ``blobs/``, where the cache keeps the bytes."""
    roots = [root.resolve()]
    if root.parent.name == "snapshots":
        roots.append((root.parent.parent / "blobs").resolve())
    return roots


def _read_index(root: Path, index_name: str) -> tuple[dict[str, Path], dict]:
    index_path = root / index_name
    doc = read_json_object(index_path, "weights index")
    wm = doc.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise InvalidAdapterError(f"{index_path}: no 'weight_map' object", hint="Regenerate the index.")
    weight_map = {str(k): _inside(root, v, index_path) for k, v in wm.items()}
    for f in sorted(set(weight_map.values())):
        if not f.is_file():
            raise NotFoundError(
                f"{index_path}: shard {f.name} is listed but missing",
                hint="Download the missing shard (or the whole model) again.",
            )
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return weight_map, meta


def locate_model_files(path: str | Path, source: str | None = None) -> ModelFiles:
    root = Path(path)
    shown = source or str(path)
    if not root.exists():
        raise NotFoundError(
            f"{shown}: no such model directory",
            hint="Give a local transformers checkpoint folder or a Hub id.",
        )
    if not root.is_dir():
        raise InvalidAdapterError(f"{shown}: is a file, expected a model directory")
    if not (root / "config.json").is_file():
        hint = "Is this a model folder? It should hold config.json."
        if (root / "adapter_config.json").is_file():
            hint = "This is an adapter folder; give the base model it was trained on."
        raise NotFoundError(f"{shown}: no config.json in this directory", hint=hint)
    config = read_json_object(root / "config.json", "model config.json")
    for index_name, single, fmt in ((SAFE_INDEX, SAFE_SINGLE, "safetensors"), (BIN_INDEX, BIN_SINGLE, "bin")):
        if (root / index_name).is_file():
            wm, meta = _read_index(root, index_name)
            files = tuple(sorted(set(wm.values())))
            return ModelFiles(root, config, files, fmt, wm, meta)
        if (root / single).is_file():
            return ModelFiles(root, config, (root / single,), fmt, {}, {})
    raise NotFoundError(
        f"{shown}: no model weights (model.safetensors, its index, or pytorch_model.bin)",
        hint="Download the weights too, not only the config.",
    )


def read_model_headers(files: ModelFiles) -> dict[str, tuple[SafetensorsHeader, str]]:
    """tensor name -> (header of its shard, name). Safetensors only."""
    out: dict[str, tuple[SafetensorsHeader, str]] = {}
    for f in files.weight_files:
        header = read_safetensors_header(f)
        for name in header.tensors:
            out[name] = (header, name)
    return out


def read_model_shapes(files: ModelFiles) -> dict[str, tuple[int, ...]]:
    """tensor name -> shape, plus the dense weights a quantized checkpoint stores packed (MXFP4
    experts, compressed-tensors ``weight_packed``: io/safetensors/quantized_header.py). Safetensors only."""
    from adapterctl.io.safetensors.quantized_header import logical_shapes

    headers = read_model_headers(files)
    shapes = {k: tuple(h.tensors[n].shape) for k, (h, n) in headers.items()}
    return {**shapes, **logical_shapes(files.config, headers)}


def find_checkpoint_key(param: str, keys: set[str] | dict) -> str | None:
    """Map a runtime parameter path to a checkpoint key.

    Checkpoints may drop the base-model prefix (GPT-2 files say ``h.0.attn.c_attn.weight`` for
    ``transformer.h.0.attn.c_attn.weight``) or add one; try those spellings in turn.
    """
    if param in keys:
        return param
    head, _, tail = param.partition(".")
    if tail and tail in keys:
        return tail
    for key in keys:
        if key.endswith("." + param) and key.count(".") == param.count(".") + 1:
            return key
    return None
