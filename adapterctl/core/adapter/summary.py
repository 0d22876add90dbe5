"""What ``inspect`` returns: an adapter's summary as typed records (what its config says, its
weights file, each LoRA module, the base it was checked against, its problems), and the flat
``inspect --json`` document scripts read (its keys and their order are part of the interface)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from adapterctl.core.adapter import problems as P


@dataclass(frozen=True)
class ModuleSummary:
    name: str
    kind: str  # a compat.LayerKind value: linear | conv1d-transposed | embedding | conv
    r: int | None
    alpha: float
    scaling: float
    a_shape: list[int] | None
    b_shape: list[int] | None
    dtype: str
    dora: bool = False
    lora_bias: bool = False
    base_shape: list[int] | None = None
    a_norm: float | None = None
    b_norm: float | None = None
    delta_norm: float | None = None
    nonfinite: int | None = None
    #: target_parameters on a 3-D parameter: the number of experts E (r is per expert; A holds
    #: r·E rows, B r·E columns; kind "experts"); None for a module LoRA and for a 2-D parameter
    #: (kind "parameter": A (r, in), B (out, r), as a Linear)
    experts: int | None = None


@dataclass(frozen=True)
class ConfigSummary:
    """What adapter_config.json says (its key names), with the default module's scaling."""

    peft_type: str | None
    task_type: str | None = None
    base_model: str | None = None
    r: int | None = None
    lora_alpha: float | None = None
    scaling: float | None = None
    use_rslora: bool = False
    variants: list[str] = field(default_factory=list)
    init_lora_weights: bool | str | None = None
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    bias: str | None = None
    peft_version: str | None = None
    target_parameters: list[str] | None = None  # LoRA on raw parameters (MoE experts)


@dataclass(frozen=True)
class WeightsSummary:
    """The weights file, from its header."""

    weights_file: str | None = None
    weights_format: str | None = None
    num_tensors: int = 0
    num_parameters: int = 0
    size_bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseCheck:
    """The base the adapter was checked against (``--base``)."""

    path: str
    model_type: str | None
    compatible: bool
    key_mapping: dict | None = None


@dataclass(frozen=True)
class AdapterSummary:
    source: str
    path: str
    config: ConfigSummary
    weights: WeightsSummary = field(default_factory=WeightsSummary)
    modules: list[ModuleSummary] = field(default_factory=list)
    extras: dict[str, list[str]] = field(default_factory=dict)
    base: BaseCheck | None = None
    problems: list[P.Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def exit_code(self) -> int:
        errs = [p.exit_code for p in self.problems if p.severity == "error"]
        return errs[0] if errs else 0

    def to_dict(self) -> dict:
        """``inspect --json``: one flat document (scripts hold these keys)."""
        c, w = asdict(self.config), asdict(self.weights)
        return {
            "source": self.source,
            "path": self.path,
            **{k: c[k] for k in _CONFIG_HEAD},
            "extras": self.extras,
            "peft_version": c["peft_version"],
            "weights_file": w["weights_file"],
            "weights_format": w["weights_format"],
            "modules": [asdict(m) for m in self.modules],
            **{k: w[k] for k in ("num_tensors", "num_parameters", "size_bytes", "dtypes")},
            "base": asdict(self.base) if self.base else None,
            "problems": [p.to_dict() for p in self.problems],
            "target_parameters": c["target_parameters"],
            "usable": self.usable,
        }


_CONFIG_HEAD = (
    "peft_type",
    "task_type",
    "base_model",
    "r",
    "lora_alpha",
    "scaling",
    "use_rslora",
    "variants",
    "init_lora_weights",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "bias",
)
