"""The one table of tensor dtypes: safetensors' names, torch's names, sizes, and which of them
adapterctl writes (``--dtype``). Stdlib only, so the start-up tier (safetensors headers,
``inspect``, ``--help``) reads it without torch; :func:`adapterctl.io.checkpoint.stored.torch_dtype` turns a
name into a torch dtype where torch is loaded anyway.

Every other module derives its view from this table (header validation, numpy reads, checkpoint
readers, the shard writer, merge/convert/attach ``--dtype``), so a dtype is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from adapterctl.errors import UsageError


@dataclass(frozen=True)
class Dtype:
    st: str  # the safetensors header name (``"BF16"``)
    torch: str | None  # torch's attribute name (``"bfloat16"``); None: adapterctl reads it nowhere
    size: float  # bytes per element (sub-byte float formats pack several per byte)
    numpy: str | None = None  # numpy's name, where numpy reads it bit-exactly (``inspect --check-values``)


#: Every dtype the safetensors format defines (its ``Dtype`` enum), in size order.
TABLE: tuple[Dtype, ...] = (
    Dtype("BOOL", "bool", 1),
    Dtype("U8", "uint8", 1, "u1"),
    Dtype("I8", "int8", 1, "i1"),
    Dtype("F8_E4M3", "float8_e4m3fn", 1),
    Dtype("F8_E5M2", "float8_e5m2", 1),
    Dtype("F8_E8M0", "float8_e8m0fnu", 1),  # FP8 checkpoints' ue8m0 block scales
    Dtype("I16", "int16", 2, "<i2"),
    Dtype("U16", None, 2),
    Dtype("F16", "float16", 2, "<f2"),
    Dtype("BF16", "bfloat16", 2),  # numpy has no bfloat16: widened by hand (io/safetensors/values.py)
    Dtype("I32", "int32", 4, "<i4"),
    Dtype("U32", None, 4),
    Dtype("F32", "float32", 4, "<f4"),
    Dtype("I64", "int64", 8, "<i8"),
    Dtype("U64", None, 8),
    Dtype("F64", "float64", 8, "<f8"),
    Dtype("F4", None, 0.5),
    Dtype("F6_E2M3", None, 0.75),
    Dtype("F6_E3M2", None, 0.75),
)
BY_ST: dict[str, Dtype] = {d.st: d for d in TABLE}

#: The dtypes adapterctl computes into and writes (merge, convert, a loaded base): the floating
#: formats transformers and PEFT save. Deltas are computed in float32 and rounded once to one of these.
WRITABLE: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: ``--dtype auto``: keep the base's (merge) or the checkpoint's (attach, generate)
AUTO = "auto"


def dtype_choices(auto: bool) -> tuple[str, ...]:
    """The values ``--dtype`` accepts, for validation and help text."""
    return (AUTO, *WRITABLE) if auto else WRITABLE


def checkpoint_dtype(config: dict) -> str:
    """What ``--dtype auto`` means for a base, in every engine: the checkpoint's dtype from its
    config.json (``dtype``, or the older ``torch_dtype``), else float32 (what transformers loads a
    config without one in). adapterctl's engine loads ``auto`` so; vLLM's own ``auto`` would run a
    float32 checkpoint in half precision, so servers are given this concrete name instead."""
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in WRITABLE else "float32"


def resolve_dtype(value: str | None, config: dict) -> str:
    """``--dtype`` as a concrete name: ``auto`` (or not given) is the checkpoint's dtype."""
    return checkpoint_dtype(config) if value in (None, AUTO) else value


@overload
def check_dtype(value: str, auto: bool = True, option: str = "--dtype") -> str: ...
@overload
def check_dtype(value: None, auto: bool = True, option: str = "--dtype") -> None: ...
@overload
def check_dtype(value: str | None, auto: bool = True, option: str = "--dtype") -> str | None: ...
def check_dtype(value: str | None, auto: bool = True, option: str = "--dtype") -> str | None:
    """``value`` if it is a dtype adapterctl writes (or ``auto`` where allowed), else a usage
    error naming the choices. None passes (the option was not given)."""
    choices = dtype_choices(auto)
    if value is None or value in choices:
        return value
    raise UsageError(
        f"{option} {value!r} is not one of {', '.join(choices)}",
        hint=f"Use {option} {choices[0]} (or {', '.join(choices[1:])}).",
    )


def torch_name(st_name: str) -> str | None:
    """torch's name of a safetensors dtype (``"BF16"`` -> ``"bfloat16"``); None if unreadable."""
    entry = BY_ST.get(st_name)
    return entry.torch if entry else None


def st_name(torch_name_: str) -> str | None:
    """safetensors' name of a torch dtype name (``"bfloat16"`` -> ``"BF16"``)."""
    return next((d.st for d in TABLE if d.torch == torch_name_), None)
