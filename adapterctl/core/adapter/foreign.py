"""``inspect`` of adapters in other engines' formats: llama.cpp LoRA files (GGUF) and MLX-LM
adapter folders, from their headers alone (no torch, no numpy, no ``gguf`` package), with the
command that converts them to PEFT."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapterctl.errors import InvalidAdapterError


@dataclass(frozen=True)
class ForeignModule:
    name: str
    r: int | None
    a_shape: list[int] | None
    b_shape: list[int] | None
    dtype: str


@dataclass(frozen=True)
class ForeignAdapterSummary:
    source: str
    format: str  # "gguf" | "mlx"
    engine: str  # "llama.cpp" | "mlx-lm"
    architecture: str | None
    adapter_type: str  # lora | dora
    lora_alpha: float | None  # GGUF adapter.lora.alpha
    scale: float | None  # MLX lora_parameters.scale
    rank: int | None  # MLX's one rank; for GGUF the most common one
    num_layers: int | None
    keys: list[str] | None
    num_tensors: int
    dtypes: dict[str, int]
    modules: list[ForeignModule] = field(default_factory=list)
    convert: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_foreign(path: str | Path, source: str | None = None) -> ForeignAdapterSummary | None:
    """The summary when ``path`` is a GGUF file or an MLX-LM adapter folder, else None."""
    from adapterctl.io.formats.classify import GGUF, MLX, classify_folder

    shown = source or str(path)
    kind = classify_folder(path)
    if kind == GGUF:
        return _gguf(path, shown)
    if kind == MLX:
        return _mlx(path, shown)
    return None


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _gguf(path, shown: str) -> ForeignAdapterSummary:
    from adapterctl.io.formats.gguf_header import read_gguf_header

    h = read_gguf_header(path)
    if h.get("general.type") != "adapter" or h.get("adapter.type") != "lora":
        raise InvalidAdapterError(
            f"{shown}: a GGUF file, but not a llama.cpp LoRA adapter (general.type="
            f"{h.get('general.type')!r}, adapter.type={h.get('adapter.type')!r})",
            hint="A GGUF base model is not an adapter; inspect reads LoRA adapters.",
        )
    pairs: dict[str, dict] = {}
    for t in h.tensors.values():
        stem, _, role = t.name.rpartition(".")
        pairs.setdefault(stem, {})[role] = t
    modules = []
    for stem, p in sorted(pairs.items()):
        a, b = p.get("lora_a"), p.get("lora_b")
        r = b.shape[-1] if b is not None and b.shape else None
        modules.append(
            ForeignModule(
                stem,
                r,
                list(a.shape) if a else None,
                list(b.shape) if b else None,
                # a tensor outside the lora_a/lora_b pairs is listed as its own module
                (a or b or next(iter(p.values()))).ggml_type,
            )
        )
    ranks = [m.r for m in modules if m.r]
    alpha = h.get("adapter.lora.alpha")
    arch = h.get("general.architecture")
    return ForeignAdapterSummary(
        shown,
        "gguf",
        "llama.cpp",
        arch if isinstance(arch, str) else None,
        "lora",
        float(alpha) if isinstance(alpha, (int, float)) else None,
        None,
        max(set(ranks), key=ranks.count) if ranks else None,
        None,
        None,
        len(h.tensors),
        _count(t.ggml_type for t in h.tensors.values()),
        modules,
        f"adapterctl convert --from gguf --base BASE {shown} OUT",
    )


def _mlx(path, shown: str) -> ForeignAdapterSummary:
    from adapterctl.io.formats.mlx_adapter import read_mlx_header

    m = read_mlx_header(path)
    lp = m.config.get("lora_parameters")
    lp = lp if isinstance(lp, dict) else {}
    stems: dict[str, dict] = {}
    for name, t in m.header.tensors.items():
        stem, _, role = name.rpartition(".")
        stems.setdefault(stem, {})[role] = t
    modules = []
    for stem, p in sorted(stems.items()):
        a, b = p.get("lora_a"), p.get("lora_b")
        modules.append(
            ForeignModule(
                stem,
                a.shape[-1] if a else None,
                list(a.shape) if a else None,
                list(b.shape) if b else None,
                (a or b or next(iter(p.values()))).dtype,
            )
        )
    kind = m.config.get("fine_tune_type", "lora")
    scale = lp.get("scale")
    keys = lp.get("keys")
    return ForeignAdapterSummary(
        shown,
        "mlx",
        "mlx-lm",
        m.config.get("model"),
        str(kind),
        None,
        float(scale) if isinstance(scale, (int, float)) else None,
        lp.get("rank") if isinstance(lp.get("rank"), int) else None,
        m.config.get("num_layers") if isinstance(m.config.get("num_layers"), int) else None,
        keys if isinstance(keys, list) else None,
        len(m.header.tensors),
        _count(t.dtype for t in m.header.tensors.values()),
        modules,
        f"adapterctl convert --from mlx [--base BASE] {shown} OUT",
    )
