"""The float parameters a quantized checkpoint stands for, from its safetensors headers alone (no
torch: the start-up tier's ``inspect --base``, ``check --base`` and attach's early check). The
readers that dequantize (io/checkpoint/quantized.py) are the reference; this only names and shapes:

- ``mxfp4``: ``<name>_blocks`` ``(E, R, G, 16)`` stands for ``<name>`` ``(E, G * 32, R)``;
- ``compressed-tensors`` ``pack-quantized``: ``<module>.weight_packed`` stands for
  ``<module>.weight`` of ``<module>.weight_shape`` (a two-number tensor, read with numpy);
- ``gptq``: ``<module>.qweight`` int32 ``(in * bits / 32, out)`` stands for ``<module>.weight`` ``(out, in)``;
- ``awq`` (GEMM): ``<module>.qweight`` int32 ``(in, out / 8)`` stands for ``<module>.weight`` ``(out, in)``;
- FP8, bitsandbytes 8-bit and the naive compressed-tensors formats keep the weight's name and shape.
"""

from __future__ import annotations

from adapterctl.io.safetensors.header import SafetensorsHeader


def logical_shapes(
    config: dict, headers: dict[str, tuple[SafetensorsHeader, str]]
) -> dict[str, tuple[int, ...]]:
    """Extra ``name -> shape`` entries for the dense weights that are stored packed (empty for
    other checkpoints); a packed tensor whose shape cannot be told is left out."""
    q = config.get("quantization_config")
    q = q if isinstance(q, dict) else {}
    method = q.get("quant_method")
    out: dict[str, tuple[int, ...]] = {}
    for key, (header, name) in headers.items():
        shape = tuple(header.tensors[name].shape)
        if method == "mxfp4" and key.endswith("_blocks") and len(shape) == 4:
            out[key[: -len("_blocks")]] = (shape[0], shape[2] * shape[3] * 2, shape[1])
        elif method == "compressed-tensors" and key.endswith(".weight_packed"):
            dense = _weight_shape(headers.get(key[: -len("_packed")] + "_shape"))
            if dense:
                out[key[: -len("_packed")]] = dense
        elif method == "gptq" and key.endswith(".qweight") and len(shape) == 2:
            out[key[: -len(".qweight")] + ".weight"] = (shape[1], shape[0] * 32 // int(q.get("bits", 4)))
        elif method == "awq" and key.endswith(".qweight") and len(shape) == 2:
            out[key[: -len(".qweight")] + ".weight"] = (shape[1] * 8, shape[0])
    return out


def _weight_shape(entry: tuple[SafetensorsHeader, str] | None) -> tuple[int, ...] | None:
    from adapterctl.io.safetensors.values import read_tensor_f32

    if entry is None:
        return None
    values = read_tensor_f32(*entry)
    return tuple(int(v) for v in values.reshape(-1)) if values is not None else None
