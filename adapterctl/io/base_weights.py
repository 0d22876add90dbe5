"""Stream tensors of a model checkpoint one at a time with ``safetensors.safe_open``.

Only the requested tensor is materialised, so memory stays bounded by the largest tensor no
matter how large the model is. Shards are opened lazily and closed on exit.
"""

from __future__ import annotations

from pathlib import Path

from adapterctl.errors import IncompatibleBaseError, InvalidAdapterError, UnsupportedError
from adapterctl.io.model_dir import ModelFiles, find_checkpoint_key, read_model_headers


class BaseWeights:
    """``with BaseWeights(files) as w: w.get("model.layers.0.self_attn.q_proj.weight")``."""

    def __init__(self, files: ModelFiles) -> None:
        if files.weights_format != "safetensors":
            raise UnsupportedError(f"{files.root}: weights are pytorch_model.bin; streaming needs "
                                   "safetensors", hint="Re-save the model with save_pretrained "
                                   "(safetensors is the default).")
        self.files = files
        self.headers = read_model_headers(files)  # validates every shard header first
        self._open: dict[str, object] = {}

    def __enter__(self) -> BaseWeights:
        return self

    def __exit__(self, *exc) -> None:
        self._open.clear()  # safe_open handles close when released

    @property
    def names(self) -> list[str]:
        return sorted(self.headers)

    def shape(self, name: str) -> tuple[int, ...]:
        header, key = self.headers[name]
        return header.tensors[key].shape

    def file_of(self, name: str) -> Path:
        return Path(self.headers[name][0].path)

    def resolve(self, param: str) -> str | None:
        """The checkpoint key for runtime parameter path ``param`` (prefix differences allowed)."""
        return find_checkpoint_key(param, self.headers)

    def load(self, name: str):
        """One tensor by its checkpoint key."""
        from safetensors import safe_open

        path = str(self.file_of(name))
        try:
            handle = self._open.get(path)
            if handle is None:
                handle = self._open[path] = safe_open(path, framework="pt", device="cpu")
            return handle.get_tensor(name)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise InvalidAdapterError(f"{path}: cannot read tensor {name}: {err}") from err

    def get(self, param: str, who: str = "the adapter"):
        """The tensor for a runtime parameter path, or IncompatibleBaseError naming it."""
        key = self.resolve(param)
        if key is None:
            raise IncompatibleBaseError(f"{self.files.root}: has no parameter {param}, which "
                                        f"{who} needs", hint="Give the base model the adapter "
                                        "was trained on.")
        return self.load(key)
