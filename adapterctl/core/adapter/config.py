"""adapter_config.json, parsed tolerantly and checked strictly where it matters (spec section 1).

Field names mirror the file's keys (``r``, ``lora_alpha``, ``target_modules``...): renaming at the
boundary is where bugs hide. Pure Python: no torch, so ``inspect`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.folders.files import read_json_object

#: Variant fields that change the maths; truthy values are refused by name (spec 1.4, 11.1).
UNSUPPORTED_VARIANTS: dict[str, str] = {
    "alora_invocation_tokens": "aLoRA (activated LoRA)",
    "use_qalora": "QALoRA",
    "arrow_config": "Arrow routing",
    "monteclora_config": "MonteCLoRA",
}
#: Initialisers that only set A and B: the saved tensors overwrite them, so they leave no trace.
PLAIN_INITS = {"gaussian", "orthogonal", "eva", "mica", "true", "false"}
#: Initialisers that mutate the base; reproducible by recomputing the residual (spec 1.7).
RECOMPUTABLE_INITS = {"pissa", "olora"}
#: Initialisers whose base mutation cannot be recomputed from the adapter alone.
NEEDS_CONVERSION_INITS = {"corda", "loftq", "lora_ga"}
#: PiSSA by a randomised SVD (``pissa_niter_N``): nobody can reproduce its residual exactly; attach
#: approximates it with the full SVD, merge and convert --base refuse it.
RANDOMISED_INITS = {"pissa_niter"}
#: Every init_kind whose adapter was trained on a mutated (residual) base. The one list of init
#: kinds: validate, attach, merge, convert and the engine rules import these sets.
BASE_MUTATING_INITS = RECOMPUTABLE_INITS | NEEDS_CONVERSION_INITS | RANDOMISED_INITS
OTHER_PEFT_TYPES = {
    "IA3",
    "LOKR",
    "LOHA",
    "OFT",
    "BOFT",
    "ADALORA",
    "PROMPT_TUNING",
    "PREFIX_TUNING",
    "P_TUNING",
    "MULTITASK_PROMPT_TUNING",
    "VERA",
    "FOURIERFT",
    "HRA",
    "VBLORA",
    "LN_TUNING",
    "POLY",
    "XLORA",
    "BONE",
    "CPT",
    "RANDLORA",
    "SHIRA",
    "C3A",
    "MISS",
    "ROAD",
    "WAVEFT",
    "DELORA",
    "OSF",
    "GRALORA",
    "ADAPTION_PROMPT",
    "TRAINABLE_TOKENS",
}


@dataclass(frozen=True)
class LoraAdapterConfig:
    """The fields of adapter_config.json that matter for loading and maths; ``raw`` keeps the rest."""

    peft_type: str | None
    r: int
    lora_alpha: float
    target_modules: list[str] | str | None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    bias: str = "none"
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | None = None
    layers_pattern: list[str] | None = None
    modules_to_save: list[str] | None = None
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    init_lora_weights: bool | str = True
    peft_version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ----- derived views -------------------------------------------------------------------
    @property
    def init_kind(self) -> str:
        """'plain', 'pissa', 'pissa_niter', 'olora', 'corda', 'loftq', 'lora_ga' or 'unknown'."""
        v = self.init_lora_weights
        if isinstance(v, bool):
            return "plain"
        v = str(v).lower()
        if v in PLAIN_INITS:
            return "plain"
        if v.startswith("pissa_niter_"):
            return "pissa_niter"
        if v in RECOMPUTABLE_INITS or v in NEEDS_CONVERSION_INITS:
            return v
        return "unknown"

    @property
    def kasa(self) -> bool:
        """KaSA (arXiv:2412.06071): PEFT truncates each adapted Linear's base weight by SVD when
        the adapter is added, and ΔW = s·B·diag(lora_diag)·A (spec 1.4)."""
        return self.raw.get("kasa_config") is not None  # {} is KaSA with its defaults (PEFT)

    @property
    def variants(self) -> list[str]:
        """Human names of the variants this adapter uses (supported or not)."""
        out = []
        if self.use_dora:
            out.append("DoRA")
        if self.use_rslora:
            out.append("rsLoRA")
        if self.lora_bias:
            out.append("lora_bias")
        out += [name for key, name in UNSUPPORTED_VARIANTS.items() if self.raw.get(key)]
        if self.raw.get("target_parameters"):
            out.append("target_parameters")  # LoRA on raw parameters, MoE experts (adapter/expert_keys.py)
        if self.raw.get("layer_replication"):
            out.append("layer_replication")  # shared-weight layer copies (core/runtime/replicate.py)
        if self.kasa:
            out.append("KaSA")  # SVD-truncated base + lora_diag (core/lora/delta.py)
        if self.raw.get("use_bdlora"):
            out.append("BD-LoRA")  # block-diagonal factors, stored compact (core/adapter/variants.py)
        if self.raw.get("velora_config"):
            out.append("VeLoRA")  # training only: the forward is plain LoRA (core/adapter/keys.py)
        return out

    @property
    def unsupported_variants(self) -> dict[str, str]:
        return {k: n for k, n in UNSUPPORTED_VARIANTS.items() if self.raw.get(k)}


def _type_error(source: str, key: str, expected: str, value: Any) -> InvalidAdapterError:
    return InvalidAdapterError(
        f"{source}: adapter_config.json key {key!r} must be {expected}, found {value!r}"[:400],
        hint="Fix the value, or save the adapter again with PEFT.",
    )


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(doc: dict, key: str, default: Any, check, expected: str, source: str) -> Any:
    value = doc.get(key, default)
    if value is None:
        return default
    if not check(value):
        raise _type_error(source, key, expected, value)
    return value


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _str_or_list(v: Any) -> bool:
    return isinstance(v, str) or _str_list(v)


def _pattern_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_num(x) for x in v.values())


def parse_adapter_config(doc: dict, source: str = "adapter_config.json") -> LoraAdapterConfig:
    """Build the config from a parsed JSON object. Unknown keys are kept in ``raw`` and ignored."""
    peft_type = doc.get("peft_type")
    if peft_type is not None and not isinstance(peft_type, str):
        raise _type_error(source, "peft_type", "a string", peft_type)
    r = _get(
        doc,
        "r",
        8,
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive integer",
        source,
    )
    alpha = _get(doc, "lora_alpha", 8, lambda v: _is_num(v) and abs(v) < 1e30, "a number", source)
    ltt = doc.get("layers_to_transform")
    if isinstance(ltt, int) and not isinstance(ltt, bool):
        ltt = [ltt]
    if ltt is not None and not (isinstance(ltt, list) and all(isinstance(i, int) for i in ltt)):
        raise _type_error(source, "layers_to_transform", "an int or a list of ints", ltt)
    lp = doc.get("layers_pattern")
    if isinstance(lp, str):
        lp = [lp]
    if lp is not None and not _str_list(lp):
        raise _type_error(source, "layers_pattern", "a string or a list of strings", lp)
    tti = doc.get("trainable_token_indices")
    if tti is not None and not (
        (isinstance(tti, list) and all(isinstance(i, int) for i in tti))
        or (
            isinstance(tti, dict)
            and all(isinstance(v, list) and all(isinstance(i, int) for i in v) for v in tti.values())
        )
    ):
        raise _type_error(source, "trainable_token_indices", "a list of ints or a dict", tti)
    init = doc.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)):
        raise _type_error(source, "init_lora_weights", "a bool or a string", init)
    bias = _get(
        doc,
        "bias",
        "none",
        lambda v: v in ("none", "all", "lora_only"),
        "'none', 'all' or 'lora_only'",
        source,
    )
    cfg = LoraAdapterConfig(
        peft_type=peft_type,
        r=r,
        lora_alpha=alpha,
        target_modules=_get(doc, "target_modules", None, _str_or_list, "a string or a list", source),
        task_type=_get(doc, "task_type", None, lambda v: isinstance(v, str), "a string", source),
        base_model_name_or_path=_get(
            doc, "base_model_name_or_path", None, lambda v: isinstance(v, str), "a string", source
        )
        or None,
        revision=_get(doc, "revision", None, lambda v: isinstance(v, str), "a string", source),
        use_rslora=bool(doc.get("use_rslora") or False),
        use_dora=bool(doc.get("use_dora") or False),
        lora_bias=bool(doc.get("lora_bias") or False),
        bias=bias,
        fan_in_fan_out=bool(doc.get("fan_in_fan_out") or False),
        rank_pattern=_get(doc, "rank_pattern", {}, _pattern_dict, "an object of numbers", source),
        alpha_pattern=_get(doc, "alpha_pattern", {}, _pattern_dict, "an object of numbers", source),
        exclude_modules=_get(doc, "exclude_modules", None, _str_or_list, "a string or a list", source),
        layers_to_transform=ltt,
        layers_pattern=lp,
        modules_to_save=_get(doc, "modules_to_save", None, _str_list, "a list of strings", source),
        trainable_token_indices=tti,
        init_lora_weights=init,
        peft_version=doc.get("peft_version") if isinstance(doc.get("peft_version"), str) else None,
        raw=dict(doc),
    )
    tp = doc.get("target_parameters")
    if tp is not None and not _str_list(tp):  # PEFT: a list, never a str (spec 1.5)
        raise _type_error(source, "target_parameters", "a list of strings", tp)
    _check_regexes(doc, source)  # after the type checks: rank_pattern may be any JSON until then
    return cfg


def _check_regexes(doc: dict, source: str) -> None:
    """Fields PEFT uses as regular expressions must compile: a broken one is invalid input."""
    checks = [(k, doc.get(k)) for k in ("target_modules", "exclude_modules") if isinstance(doc.get(k), str)]
    lp = doc.get("layers_pattern")
    checks += [("layers_pattern", p) for p in ([lp] if isinstance(lp, str) else lp or [])]
    for key in ("rank_pattern", "alpha_pattern"):
        checks += [(key, k) for k in (doc.get(key) or {})]
    for key, pattern in checks:
        try:
            re.compile(cast(str, pattern))  # a non-string raises TypeError, reported below
        except (re.error, TypeError, RecursionError) as err:
            raise InvalidAdapterError(
                f"{source}: adapter_config.json {key} holds an invalid regular expression "
                f"{str(pattern)[:80]!r} ({err})",
                hint="Fix the pattern; PEFT would fail on it too.",
            ) from err


def read_adapter_config(path: str | Path) -> LoraAdapterConfig:
    """Read ``adapter_config.json`` (a file, or the adapter folder that holds it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "adapter_config.json"
    doc = read_json_object(p, "adapter_config.json")
    return parse_adapter_config(doc, str(p))


def check_lora_type(cfg: LoraAdapterConfig, source: str) -> None:
    """Refuse anything that is not a LoRA adapter, naming what it is."""
    if cfg.peft_type is None:
        raise InvalidAdapterError(
            f"{source}: adapter_config.json has no 'peft_type'",
            hint='A PEFT LoRA adapter config holds "peft_type": "LORA".',
        )
    if cfg.peft_type.upper() != "LORA":
        known = cfg.peft_type.upper() in OTHER_PEFT_TYPES
        raise UnsupportedError(
            f"{source}: peft_type is {cfg.peft_type!r}: "
            + ("a PEFT adapter, but not a LoRA adapter" if known else "not a LoRA adapter"),
            hint="adapterctl handles LoRA adapters (peft_type LORA) only.",
        )


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_safe_adapter_name(name: str) -> bool:
    """Adapter names become folder and key parts: no path separators, no '..'."""
    return bool(_SAFE_NAME.match(name)) and name not in (".", "..")
