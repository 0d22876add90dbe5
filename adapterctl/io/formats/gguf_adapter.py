"""llama.cpp LoRA adapter files (GGUF), written and read with the ``gguf`` package (numpy only).

The layout is llama.cpp's (src/llama-adapter.cpp, ``llama_adapter_lora_init_impl``): metadata
``general.type = "adapter"``, ``general.architecture`` = the base model's architecture,
``adapter.type = "lora"``, ``adapter.lora.alpha`` (float32); one pair of tensors per adapted base
tensor, named ``<base tensor name>.lora_a`` / ``.lora_b``. In numpy order lora_a is ``(r, in)`` and
lora_b ``(out, r)`` (the token embedding is the exception: see :mod:`core.convert.gguf`).
This module knows the file format and the storage types; the LoRA maths are core's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, MissingDependencyError

#: --outtype -> the ggml type lora_a / lora_b are stored in (convert_lora_to_gguf's choices)
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
KEY_ALPHA = "adapter.lora.alpha"


def import_gguf():
    """The ``gguf`` package, or a MissingDependencyError saying how to install it (exit 7)."""
    try:
        import gguf
    except ImportError as err:
        raise MissingDependencyError(
            "GGUF files need the 'gguf' package, which is not installed",
            hint="pip install 'adapterctl[gguf]'  (or: pip install gguf)",
        ) from err
    return gguf


@dataclass(frozen=True)
class GGUFAdapterFile:
    """A llama.cpp LoRA adapter in memory: float32 numpy tensors under their GGUF names."""

    arch: str
    alpha: float
    tensors: dict  # name -> np.ndarray (float32, numpy order)
    metadata: dict  # the other scalar metadata (general.name, ...)
    types: dict  # name -> ggml type name as stored


def _qtype(gguf, outtype: str):
    if outtype not in OUTTYPES:
        raise ValueError(outtype)
    return {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[outtype]


def encode_tensor(array, outtype: str):
    """``array`` (float32) stored as ``outtype``: (data, ggml type). Like llama.cpp's converter, a
    tensor whose rows cannot be cut into Q8_0 blocks of 32 falls back to F16."""
    import numpy as np

    gguf = import_gguf()
    qtype = _qtype(gguf, outtype)
    data = np.ascontiguousarray(array, dtype=np.float32)
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(data, qtype), qtype


def write_gguf_adapter(
    path: str | Path, arch: str, alpha: float, tensors: dict, outtype: str, name: str | None = None
) -> dict[str, str]:
    """Write the adapter file at ``path`` (a temporary path: the caller moves it into place).
    Returns the ggml type each tensor was stored as."""
    gguf = import_gguf()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if name:
        writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    stored = {}
    for key, array in tensors.items():
        data, qtype = encode_tensor(array, outtype)  # quantized: uint8 rows the writer understands
        writer.add_tensor(key, data, raw_dtype=qtype)
        stored[key] = qtype.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def read_gguf_adapter(path: str | Path) -> GGUFAdapterFile:
    """Read a llama.cpp LoRA adapter: metadata checked as llama.cpp checks it, tensors
    dequantized to float32 numpy arrays."""
    import numpy as np

    from adapterctl.io.formats.gguf_header import read_gguf_header

    header = read_gguf_header(path)  # validates sizes before numpy maps anything
    meta = header.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise InvalidAdapterError(
            f"{path}: is a GGUF file but not a llama.cpp LoRA adapter (general.type="
            f"{meta.get('general.type')!r}, adapter.type={meta.get('adapter.type')!r})",
            hint="A base model GGUF cannot be converted to an adapter.",
        )
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise InvalidAdapterError(f"{path}: general.architecture is missing")
    gguf = import_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise InvalidAdapterError(f"{path}: cannot read GGUF tensors: {err}") from err
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as err:
            raise InvalidAdapterError(
                f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which cannot be read back",
                hint="Convert with --outtype f32, f16, bf16 or q8_0.",
            ) from err
        tensors[t.name] = np.array(values, dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    alpha = meta.get(KEY_ALPHA, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InvalidAdapterError(
            f"{path}: {KEY_ALPHA} must be a number, got {alpha!r}"[:300],
            hint="llama.cpp reads it as a float32; rewrite the adapter with a numeric alpha.",
        )
    scalars = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    return GGUFAdapterFile(arch, float(alpha), tensors, scalars, types)
