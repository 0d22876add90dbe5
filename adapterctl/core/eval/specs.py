"""``--variant NAME=SPEC``: what SPEC names, read without torch. A folder with adapter_config.json is
another adapter on the same base; one with config.json a (merged) model; a ``.gguf`` file a
llama.cpp file; an MLX adapter folder (adapters.safetensors) one for mlx-lm; ``http(s)://URL#name``
a served model; ``bf16``/``fp16``/``float32`` the reference's adapter run in that dtype."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import NotFoundError, UsageError

#: dtype spellings a SPEC may use -> the dtype table's names (io/dtypes.py)
DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "f32": "float32",
    "float32": "float32",
}
KINDS = ("adapter", "model", "dtype", "gguf", "mlx", "endpoint")
#: names the report itself uses
RESERVED = ("base", "reference")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class VariantSpec:
    """One variant: its name, what kind of copy it is, and where (a path, a URL or a dtype)."""

    name: str
    kind: str
    target: str
    served: str | None = None  # an endpoint's served model name (after '#')

    def to_dict(self) -> dict:
        spec = f"{self.target}#{self.served}" if self.served else self.target
        return {"name": self.name, "kind": self.kind, "spec": spec}


def parse_variant(text: str) -> VariantSpec:
    """``NAME=SPEC`` -> a classified :class:`VariantSpec`."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise UsageError(
            f"--variant {text!r}: expected NAME=SPEC",
            hint="e.g. --variant merged=./merged, --variant r4=./lora-r4, --variant bf16=bf16.",
        )
    if not _NAME.match(name) or name in RESERVED:
        raise UsageError(
            f"--variant {text!r}: the name {name!r} is not allowed",
            hint="Use letters, digits, '.', '_' and '-'; 'base' and 'reference' are the report's own rows.",
        )
    return classify(name, spec)


def classify(name: str, spec: str) -> VariantSpec:
    if spec.lower() in DTYPES:
        return VariantSpec(name, "dtype", DTYPES[spec.lower()])
    if spec.startswith(("http://", "https://")):
        url, _, served = spec.partition("#")
        if not served:
            raise UsageError(
                f"variant {name!r}: an endpoint needs the served model's name: URL#NAME",
                hint="e.g. --variant vllm=http://127.0.0.1:8000#my-lora",
            )
        return VariantSpec(name, "endpoint", url, served)
    path = Path(spec).expanduser()
    if not path.exists():
        raise NotFoundError(
            f"variant {name!r}: {spec} does not exist",
            hint="SPEC is an adapter or model folder, a .gguf file, URL#NAME, or bf16/fp16/float32.",
        )
    if path.is_file() and path.suffix == ".gguf":
        return VariantSpec(name, "gguf", str(path))
    if path.is_dir() and (path / "config.json").is_file():
        return VariantSpec(name, "model", str(path))
    if path.is_dir() and (path / "adapters.safetensors").is_file():
        return VariantSpec(name, "mlx", str(path))
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return VariantSpec(name, "adapter", str(path))
    raise UsageError(
        f"variant {name!r}: cannot tell what {spec} is",
        hint="A variant is a folder with adapter_config.json (adapter) or config.json (model), an "
        "MLX adapter folder, a .gguf file, URL#NAME, or bf16/fp16/float32.",
    )


def check_names(specs: list[VariantSpec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise UsageError(f"two variants are named {s.name!r}", hint="Give each --variant its own NAME.")
        seen.add(s.name)
