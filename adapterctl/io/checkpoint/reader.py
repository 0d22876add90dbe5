"""Read a model checkpoint tensor by tensor: safetensors with positioned reads at the offsets of
its (validated) header, legacy ``.bin`` shards through ``torch.load(weights_only=True, mmap=True)``,
quantized weights (bitsandbytes, FP8, MXFP4, compressed-tensors) dequantized on read
(io/checkpoint/quantized.py). The one reader of base and
fine-tuned checkpoints: ``merge`` streams :class:`StoredTensor` lists, ``convert --base`` and
``--extract`` look tensors up by key (:meth:`CheckpointReader.load_param`).

Why not ``safe_open``'s mmap: pages of a mapping stay resident (and count in RSS) until the whole
file is unmapped, so a 5 GB shard costs 5 GB of RSS. Here each tensor gets a map of its own byte
range (io/safetensors/file_pages.py, copy-on-write: code may work on it in place), undone when the tensor is
dropped, so memory stays at the tensors in use whatever the shard size, and nothing is copied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from io import FileIO
from pathlib import Path

import torch

from adapterctl.errors import IncompatibleBaseError, InvalidAdapterError
from adapterctl.io.checkpoint.quantized import dequantize, group_logical
from adapterctl.io.checkpoint.stored import FLOAT_DTYPES, ST_TO_TORCH, StoredTensor
from adapterctl.io.folders.model_dir import ModelFiles, find_checkpoint_key
from adapterctl.io.safetensors.file_pages import map_range, will_need
from adapterctl.io.safetensors.header import read_safetensors_header

#: False: every tensor is read into a fresh buffer (the reference path the tests compare with)
MAP_READS = True


def list_tensors(files: ModelFiles) -> list[StoredTensor]:
    """Every tensor of the checkpoint, in file order then storage order (sequential reads)."""
    out: list[StoredTensor] = []
    for f in files.weight_files:
        if files.weights_format == "safetensors":
            header = read_safetensors_header(f)
            items = sorted(header.tensors.items(), key=lambda kv: kv[1].data_offsets[0])
            for name, info in items:
                if info.dtype not in ST_TO_TORCH:
                    raise InvalidAdapterError(
                        f"{f}: {name} has dtype {info.dtype}, which adapterctl cannot read",
                        hint="Convert the checkpoint first.",
                    )
                start = 8 + header.header_size + info.data_offsets[0]
                out.append(
                    StoredTensor(name, ST_TO_TORCH[info.dtype], tuple(info.shape), f, start, info.nbytes)
                )
        else:
            for name, t in _load_bin(f).items():
                out.append(StoredTensor(name, t.dtype, tuple(t.shape), f))
    return out


def base_float_dtype(stored: list[StoredTensor]) -> torch.dtype:
    """The checkpoint's dtype: the most common of float32/bfloat16/float16 among its tensors."""
    floats = [s.dtype for s in stored if s.dtype in FLOAT_DTYPES]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and torch errors: the file is not a safe tensor dict
        raise InvalidAdapterError(
            f"{path}: cannot be loaded safely ({type(err).__name__}: {err})"[:400],
            hint="Only plain tensor dicts are read from .bin files (weights_only=True); re-save "
            "the model with safetensors in a trusted environment.",
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidAdapterError(f"{path}: is not a dict of tensors")
    return state


def _pread_into(fd: int, buf: bytearray, offset: int) -> int:
    """Fill ``buf`` from ``offset`` (one call reads at most ~2 GB on Linux); returns bytes read."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


class CheckpointReader:
    """``get(stored)`` returns one tensor; keeps only the current file open (mmap for ``.bin``).

    By key: ``with CheckpointReader(files) as w: w.load_param("model.layers.0.mlp.up_proj.weight")``
    (:meth:`names`, :meth:`shape`, :meth:`file_of`, :meth:`resolve`, :meth:`load` index the
    checkpoint's logical tensors on first use: quantized weights appear as their float tensor).
    """

    def __init__(self, files: ModelFiles):
        self.files = files
        self._path: Path | None = None
        self._handle = None
        self._size = 0  # of the open safetensors file: a map past its end would be a SIGBUS
        self._index: dict[str, StoredTensor] | None = None

    # ----- by key ----------------------------------------------------------------------------
    def logical_tensors(self) -> list[StoredTensor]:
        """Every tensor, in storage order; a quantized weight (bitsandbytes, FP8, MXFP4,
        compressed-tensors) and its side tensors are one float tensor (in the checkpoint's float
        dtype) dequantized on read (spec 6.4)."""
        stored = list_tensors(self.files)
        return group_logical(
            stored,
            self.get,
            base_float_dtype(stored),
            self.files.config,
            str(self.files.root / "config.json"),
        )

    @property
    def index(self) -> dict[str, StoredTensor]:
        if self._index is None:
            self._index = {s.key: s for s in self.logical_tensors()}
        return self._index

    @property
    def names(self) -> list[str]:
        return sorted(self.index)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name].shape

    def file_of(self, name: str) -> Path:
        return self.index[name].file

    def resolve(self, param: str) -> str | None:
        """The checkpoint key for runtime parameter path ``param`` (prefix differences allowed)."""
        return find_checkpoint_key(param, self.index)

    def load(self, name: str) -> torch.Tensor:
        """One tensor by its checkpoint key."""
        return self.get(self.index[name])

    def load_param(self, param: str, who: str = "the adapter") -> torch.Tensor:
        """The tensor for a runtime parameter path, or IncompatibleBaseError naming it."""
        key = self.resolve(param)
        if key is None:
            raise IncompatibleBaseError(
                f"{self.files.root}: has no parameter {param}, which {who} needs",
                hint="Give the base model the adapter was trained on.",
            )
        return self.load(key)

    # ----- by stored tensor ------------------------------------------------------------------

    def _open(self, path: Path) -> FileIO | dict[str, torch.Tensor]:
        if self._path != path or self._handle is None:  # (close() clears both)
            self.close()
            if self.files.weights_format == "safetensors":
                try:
                    self._handle = open(path, "rb", buffering=0)
                    self._size = os.fstat(self._handle.fileno()).st_size
                except OSError as err:
                    raise InvalidAdapterError(f"{path}: cannot open: {err.strerror}") from err
            else:
                self._handle = _load_bin(path)
            self._path = path
        return self._handle

    def get(self, stored: StoredTensor) -> torch.Tensor:
        if stored.quant is not None:
            return dequantize(stored, self.get)
        handle = self._open(stored.file)
        if isinstance(handle, dict):
            return handle[stored.key]
        if not stored.nbytes:
            return torch.empty(stored.shape, dtype=stored.dtype)
        if stored.offset + stored.nbytes > self._size:
            raise self._truncated(stored)
        if MAP_READS and stored.offset % stored.dtype.itemsize == 0:
            try:
                m, start = map_range(handle.fileno(), stored.offset, stored.nbytes)
            except OSError as err:
                raise InvalidAdapterError(f"{stored.file}: cannot read {stored.key}: {err.strerror}") from err
            return torch.frombuffer(
                m, dtype=stored.dtype, count=stored.nbytes // stored.dtype.itemsize, offset=start
            ).view(stored.shape)
        buf = bytearray(stored.nbytes)  # not aligned to its dtype: read it into a fresh buffer
        try:
            got = _pread_into(handle.fileno(), buf, stored.offset)
        except OSError as err:
            raise InvalidAdapterError(f"{stored.file}: cannot read {stored.key}: {err.strerror}") from err
        if got != stored.nbytes:
            raise self._truncated(stored)
        return torch.frombuffer(buf, dtype=stored.dtype).reshape(stored.shape)

    def _truncated(self, stored: StoredTensor) -> InvalidAdapterError:
        return InvalidAdapterError(
            f"{stored.file}: truncated: {stored.key} needs bytes up to "
            f"{stored.offset + stored.nbytes}, the file ends before",
            hint="The shard is corrupt or incomplete; download it again.",
        )

    def raw(self, stored: StoredTensor) -> tuple[int, int] | None:
        """(file descriptor, offset) of a tensor's bytes as stored, for a copy that needs no
        tensor (valid until the reader moves to another file); None for a quantized or ``.bin``
        tensor, or one the file is too short for."""
        if stored.quant is not None or stored.offset < 0:
            return None
        handle = self._open(stored.file)
        if isinstance(handle, dict) or stored.offset + stored.nbytes > self._size:
            return None
        return handle.fileno(), stored.offset

    def prefetch(self, stored: StoredTensor) -> None:
        """Start reading a safetensors tensor's bytes into the page cache (a hint)."""
        if stored.quant is None and stored.offset >= 0 and self.files.weights_format == "safetensors":
            try:
                fd = os.open(stored.file, os.O_RDONLY)
            except OSError:
                return
            try:
                will_need(fd, stored.offset, stored.nbytes)
            finally:
                os.close(fd)

    def iter(self, stored: list[StoredTensor]) -> Iterator[tuple[StoredTensor, torch.Tensor]]:
        for s in stored:
            yield s, self.get(s)

    def close(self) -> None:
        if self._handle is not None and not isinstance(self._handle, dict):
            self._handle.close()
        self._handle, self._path = None, None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def checkpoint_renames(config: dict | str | None, keys) -> tuple[dict[str, str], dict[str, list[str]]]:
    """transformers' own checkpoint -> runtime key conversions for this model (v5 loading).

    ``config`` is the checkpoint's config.json (or just its model_type). The renames are the ones
    ``from_pretrained`` applies, found the way it finds them: a parameter-free (meta) skeleton of
    the class ``AutoModelForCausalLM`` builds, and ``get_model_conversion_mapping`` over it, which
    looks each sub-model up by class name first (``GPTNeoXForCausalLM``: ``embed_out`` ->
    ``lm_head``), then by model_type (Mixtral's ``block_sparse_moe`` -> ``mlp``), plus the legacy
    renames and the base-model prefix added or dropped. Nothing is loaded and no repo code runs
    (a model type transformers does not know has no table).

    Returns ``(runtime name -> checkpoint key)`` for plain renamings, and ``(checkpoint key ->
    runtime names)`` for the keys a converter fuses (MoE experts stacked into one parameter) or
    splits (a stored qkv cut into q, k and v): no runtime parameter is that whole stored tensor,
    so no delta can be added to it as one. Empty when transformers is absent or has no table.
    """
    conf = {"model_type": config} if isinstance(config, str) or config is None else config
    try:
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:
        return {}, {}
    transforms, prefix, meta = _conversions(conf)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamed, fused = {}, {}
    for key in keys:
        try:
            name, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        except Exception:  # a table that does not apply is the same as no table
            continue
        if pattern is not None:
            fused[key] = _converter_targets(name, pattern, converters)
        elif name != key:
            renamed[name] = key
    return renamed, fused


def _converter_targets(name: str, pattern: str, converters) -> list[str]:
    """The runtime names a converted key feeds: ``name`` (the first target) and, for a converter
    that splits one stored tensor (Chunk), the same name with each other target pattern."""
    for conv in converters:
        if pattern in conv.source_patterns:
            first = conv.target_patterns[0]
            return [name] + [name.replace(first, t) for t in conv.target_patterns[1:] if first in name]
    return [name]


def _conversions(config: dict) -> tuple[list, str | None, dict | None]:
    """(transforms, base_model_prefix, meta state dict) as ``from_pretrained`` would use them."""
    try:
        skeleton = meta_skeleton(config)
    except Exception:  # unknown or custom architectures: transformers has nothing to apply
        skeleton = None
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            get_model_conversion_mapping,
        )

        if skeleton is not None:
            return (
                get_model_conversion_mapping(skeleton),
                skeleton.base_model_prefix,
                dict.fromkeys(skeleton.state_dict(), True),
            )
        model_type = config.get("model_type")
        return list(get_checkpoint_conversion_mapping(model_type) or ()) if model_type else [], None, None
    except Exception:  # a table that does not build is the same as no table
        return [], None, None


def meta_skeleton(config: dict):
    """The model ``AutoModelForCausalLM.from_config`` builds for this config, on the meta device
    (no memory, no weights); None for a model type transformers does not know."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    fields = {k: v for k, v in config.items() if k not in ("auto_map", "quantization_config")}
    conf = CONFIG_MAPPING[model_type].from_dict(fields)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(conf)
