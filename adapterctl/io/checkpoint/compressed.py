"""compressed-tensors checkpoints (``quantization_config.quant_method == "compressed-tensors"``:
llm-compressor / vLLM models): each quantized Linear's stored tensors are grouped into one logical
float weight, dequantized on read (spec 6.4). Read from compressed-tensors 0.20's compressors
(``compressors/pack_quantized``, ``compressors/naive_quantized``) and its ``dequantize``
(``quantization/lifecycle/forward.py``):

- ``pack-quantized`` (W4A16/W8A16 int, GPTQ/AWQ exports): ``weight_packed`` int32, elements
  densely packed from bit 0 (8 int4 or 4 int8 per word), stored unsigned (``q + 2**(bits-1)``);
  ``weight_shape`` the dense shape; ``weight_scale``; asymmetric group/channel schemes add
  ``weight_zero_point`` packed the same way along dim 0; activation-ordered groups add
  ``weight_g_idx`` (the group of each column).
- ``naive-quantized``, ``int-quantized``, ``float-quantized`` (W8A8 int8 / FP8):
  ``weight`` int8 or float8_e4m3fn + ``weight_scale`` (+ ``weight_zero_point``).
- ``W = (q - zero_point) * scale`` with the scale of a tensor (one number), a channel (rows, 1),
  a group (rows, ceil(cols / group_size)) or a block (ceil(rows/bh), ceil(cols/bw)).

Activation and KV-cache scales (``input_scale``, ``k_scale``...) only serve quantized kernels and
are dropped. Other formats (nvfp4/mxfp4 packs, sparse, marlin-24), other bit widths and
transformed (rotated) models are refused by name.
"""

from __future__ import annotations

import math
import re

import torch

from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.checkpoint.stored import Grouping, StoredTensor

PACKED, NAIVE = "pack-quantized", ("naive-quantized", "int-quantized", "float-quantized")
SUPPORTED_FORMATS = (PACKED, *NAIVE)
STRATEGIES = ("tensor", "channel", "group", "block")
WEIGHT_SIDES = ("weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
#: activation/KV-cache quantization parameters: no part of the dense model
DROPPED = (
    "input_scale",
    "input_zero_point",
    "output_scale",
    "output_zero_point",
    "input_global_scale",
    "k_scale",
    "v_scale",
    "q_scale",
    "k_zero_point",
    "v_zero_point",
)
HINT = "The compressed-tensors checkpoint is incomplete or corrupt; download it again."


def _unsupported(where: str, what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{where}: {what} is not supported (adapterctl dequantizes "
        f"compressed-tensors formats {', '.join(SUPPORTED_FORMATS)} with int4/"
        "int8/fp8 weights)",
        hint="Merge into the unquantized model instead.",
    )


def _groups(qconf: dict, where: str) -> list[tuple[list[str], dict, str]]:
    """(targets, weight args, format) per config group, each checked."""
    if qconf.get("transform_config"):
        raise _unsupported(where, "quantization_config.transform_config (rotated weights)")
    sparsity = qconf.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise _unsupported(where, f"sparsity format {sparsity.get('format')!r}")
    status = qconf.get("quantization_status", "compressed")
    if status != "compressed":
        raise _unsupported(where, f"quantization_status {status!r} (not a compressed checkpoint)")
    groups = qconf.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise InvalidAdapterError(
            f"{where}: quantization_config.config_groups is missing or empty",
            hint="Fix config.json or re-export the compressed checkpoint.",
        )
    out = []
    for name, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            continue  # activation-only groups leave weights as they are
        fmt = group.get("format") or qconf.get("format")
        args = dict(weights)
        if fmt not in SUPPORTED_FORMATS:
            raise _unsupported(where, f"config_groups.{name}: format {fmt!r}")
        bits, kind, strategy = args.get("num_bits"), args.get("type", "int"), args.get("strategy")
        if (kind, bits) not in (("int", 4), ("int", 8), ("float", 8)) or (kind, fmt) == ("float", PACKED):
            raise _unsupported(where, f"config_groups.{name}: {kind} {bits}-bit weights in {fmt}")
        if strategy not in STRATEGIES or (strategy == "block" and fmt == PACKED):
            raise _unsupported(where, f"config_groups.{name}: strategy {strategy!r} in {fmt}")
        out.append((list(group.get("targets") or []), args, fmt))
    return out


def _matches(module: str, target: str) -> int:
    """2 for a name or regex match, 1 for a class-name target (every quantized module here is a
    Linear), 0 for none (compressed-tensors' ``match_name``/``_match_class``)."""
    if target.startswith("re:"):
        return 2 * (re.match(target[3:], module) is not None)
    if target == module:
        return 2
    return int(target[:1].isupper() and "." not in target)


def _scheme(module: str, groups, where: str, key: str) -> tuple[dict, str]:
    ranked = sorted(
        (
            (max((_matches(module, t) for t in targets), default=0), i)
            for i, (targets, _, _) in enumerate(groups)
        ),
        key=lambda x: (-x[0], x[1]),
    )
    if not ranked or ranked[0][0] == 0:
        raise InvalidAdapterError(
            f"{where}: no quantization_config.config_groups entry targets "
            f"{module} (stored quantized as {key})",
            hint=HINT,
        )
    _, args, fmt = groups[ranked[0][1]]
    return args, fmt


def _scale_shape(args: dict, shape: tuple[int, ...], key: str, where: str) -> tuple[int, ...]:
    *lead, rows, cols = shape
    strategy = args["strategy"]
    if strategy == "channel":
        return (*lead, rows, 1)
    if strategy == "group":
        size = args.get("group_size")
        if not isinstance(size, int) or size <= 0:
            raise InvalidAdapterError(
                f"{where}: group strategy without a positive group_size (for {key})", hint="Fix config.json."
            )
        return (*lead, rows, math.ceil(cols / size))
    if strategy == "block":
        bh, bw = args.get("block_structure") or (0, 0)
        return (*lead, math.ceil(rows / bh), math.ceil(cols / bw))
    return ()


def group_compressed(
    stored: list[StoredTensor], qconf: dict, where: str, read, float_dtype: torch.dtype
) -> list[StoredTensor]:
    groups = _groups(qconf, where)
    grouping = Grouping(stored)
    by_key = grouping.by_key
    for s in stored:
        module, _, leaf = s.key.rpartition(".")
        if leaf in DROPPED:
            grouping.drop(s.key)
        packed = leaf == "weight_packed"
        if not (
            packed
            or (
                leaf == "weight_scale"
                and module + ".weight" in by_key
                and module + ".weight_packed" not in by_key
            )
        ):
            continue
        args, fmt = _scheme(module, groups, where, s.key)
        sides = {n: by_key[f"{module}.{n}"] for n in WEIGHT_SIDES if f"{module}.{n}" in by_key}
        if "weight_scale" not in sides:
            raise InvalidAdapterError(f"{s.file}: {s.key} has no {module}.weight_scale", hint=HINT)
        q = s if packed else by_key[module + ".weight"]
        shape = _dense_shape(q, sides, args, read) if packed else q.shape
        _check(q, sides, args, fmt, shape, where)
        scheme = (
            ("format", fmt),
            ("bits", args["num_bits"]),
            ("strategy", args["strategy"]),
            ("group_size", args.get("group_size")),
            ("block", tuple(args.get("block_structure") or ())),
        )
        parts = (q, *sides.values())
        grouping.logical_weight(
            q,
            parts,
            quant="compressed",
            dtype=float_dtype,
            key=module + ".weight",
            shape=shape,
            scheme=scheme,
        )
    return grouping.tensors()


def _dense_shape(q: StoredTensor, sides: dict, args: dict, read) -> tuple[int, ...]:
    ws = sides.get("weight_shape")
    if ws is None:
        raise InvalidAdapterError(
            f"{q.file}: {q.key} has no {q.key.rpartition('.')[0]}.weight_shape", hint=HINT
        )
    shape = tuple(int(v) for v in read(ws).reshape(-1).tolist())
    words = math.ceil(shape[-1] * args["num_bits"] / 32) if shape else -1
    if len(shape) < 2 or tuple(q.shape) != (*shape[:-1], words):
        raise InvalidAdapterError(
            f"{q.file}: {q.key} has shape {list(q.shape)}, which does not "
            f"hold {args['num_bits']}-bit weights of weight_shape "
            f"{list(shape)}",
            hint=HINT,
        )
    return shape


def _check(q: StoredTensor, sides: dict, args: dict, fmt: str, shape, where: str) -> None:
    want_dtype = (
        torch.int32
        if fmt == PACKED
        else (torch.int8 if args.get("type", "int") == "int" else torch.float8_e4m3fn)
    )
    if q.dtype != want_dtype:
        raise InvalidAdapterError(
            f"{q.file}: {q.key} is {q.dtype}; {fmt} "
            f"{args.get('type', 'int')}{args['num_bits']} stores "
            f"{want_dtype}",
            hint=HINT,
        )
    scale = sides["weight_scale"]
    want = _scale_shape(args, tuple(shape), q.key, where)
    ok = math.prod(scale.shape) == 1 if not want else tuple(scale.shape) == want
    if not ok:
        raise InvalidAdapterError(
            f"{scale.file}: {scale.key} has shape {list(scale.shape)}, "
            f"expected {list(want) or 'one number'} for {args['strategy']} "
            f"scales of a {list(shape)} weight",
            hint=HINT,
        )
    zp = sides.get("weight_zero_point")
    if zp is not None and fmt == PACKED and args["strategy"] in ("group", "channel"):
        want_zp = (*want[:-2], math.ceil(want[-2] * args["num_bits"] / 32), want[-1])
        if tuple(zp.shape) != want_zp:
            raise InvalidAdapterError(
                f"{zp.file}: {zp.key} has shape {list(zp.shape)}, expected "
                f"{list(want_zp)} (packed along rows)",
                hint=HINT,
            )


# ----- values -----------------------------------------------------------------------------------
def unpack_int32(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The signed values of the last dim (``count`` of them) of densely packed int32 words
    (4 or 8 bits: they never straddle a byte, so the words are read as little-endian bytes)."""
    u8 = packed.contiguous().view(torch.uint8).to(torch.int16)
    if bits == 4:
        u8 = torch.stack((u8 & 0xF, u8 >> 4), dim=-1).flatten(-2)
    return (u8[..., :count] - (1 << (bits - 1))).to(torch.float32)


def _expand(v: torch.Tensor, sch: dict, shape, g_idx: torch.Tensor | None) -> torch.Tensor:
    """Per-element view of scales (or zero points) of the scheme's strategy, broadcastable."""
    rows, cols = shape[-2:]
    strategy = sch["strategy"]
    if strategy == "tensor":
        return v.reshape(())
    if strategy == "group":
        if g_idx is not None:
            return v[..., g_idx.long()]
        return v.repeat_interleave(sch["group_size"], dim=-1)[..., :cols]
    if strategy == "block":
        bh, bw = sch["block"]
        return v.repeat_interleave(bh, dim=-2)[..., :rows, :].repeat_interleave(bw, dim=-1)[..., :cols]
    return v  # channel: (rows, 1) broadcasts


def dequantize_compressed(stored: StoredTensor, read) -> torch.Tensor:
    sch = dict(stored.scheme)
    parts = {p.key.rpartition(".")[2]: p for p in stored.parts}
    shape, bits = stored.shape, sch["bits"]
    if sch["format"] == PACKED:
        q = unpack_int32(read(parts["weight_packed"]), bits, shape[-1]).reshape(shape)
    else:
        q = read(parts["weight"]).to(torch.float32)
    g_idx = read(parts["weight_g_idx"]) if "weight_g_idx" in parts else None
    if "weight_zero_point" in parts:
        zp = read(parts["weight_zero_point"])
        if sch["format"] == PACKED and sch["strategy"] in ("group", "channel"):
            rows = shape[-2]
            zp = unpack_int32(zp.transpose(-1, -2), bits, rows).transpose(-1, -2)
        q = q.sub_(_expand(zp.to(torch.float32), sch, shape, g_idx))
    scale = read(parts["weight_scale"]).to(torch.float32)
    return q.mul_(_expand(scale, sch, shape, g_idx))  # float32: the caller rounds once
