"""``target_parameters``: LoRA on raw parameters such as fused MoE experts (spec 1.6, 4.2, 5.6).

PEFT's ``ParamWrapper`` adapts one ``nn.Parameter``; a 3-D parameter (E experts) gets
``lora_A (r·E, in)`` and ``lora_B (out, r·E)``. When several parameters of one module are targeted
the wrappers nest: the parameter registered first on the module is innermost, so its keys are
``M.base_layer.lora_A.weight`` and the last one's are ``M.lora_A.weight``. The file does not say
which parameter a key belongs to (spec 4.2): it follows from ``target_parameters`` and the
module's registration order. transformers' fused experts register ``gate_up_proj`` before
``down_proj`` (models/mixtral/modeling_mixtral.py MixtralExperts, qwen3_moe Qwen3MoeExperts,
gpt_oss GptOssExperts); the engine, which holds the model, passes the real order.

Pure Python over key names and shapes: ``inspect`` reads it from headers, the loader from tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import permutations

from adapterctl.core.adapter import problems as P
from adapterctl.core.adapter.config import LoraAdapterConfig
from adapterctl.core.adapter.keys import LORA_SUFFIXES, module_path_of, strip_prefix
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.errors import IncompatibleBaseError, UnsupportedError

#: registration order of the parameters of transformers' fused expert modules
REGISTRATION_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "down_proj")
#: model types whose experts are stored (E, in, out): ``@use_experts_implementation(
#: is_transposed=True)`` (transformers models/gpt_oss/modeling_gpt_oss.py); PEFT reads the module's
#: ``is_transposed`` and otherwise assumes (E, out, in)
TRANSPOSED_EXPERTS = {"gpt_oss"}
#: the config fields ParamWrapper refuses (peft/tuners/lora/layer.py ParamWrapper.__init__)
_REFUSED = {"use_dora": "DoRA", "lora_bias": "lora_bias", "fan_in_fan_out": "fan_in_fan_out"}


def target_parameters(cfg: LoraAdapterConfig) -> list[str]:
    tp = cfg.raw.get("target_parameters")
    return [t for t in tp if isinstance(t, str)] if isinstance(tp, list) else []


def params_of(
    cfg: LoraAdapterConfig, module: str, exists: Callable[[str, str], bool | None] | None = None
) -> list[str]:
    """The parameter names ``target_parameters`` selects on module ``module`` (PEFT matches
    ``f"{module}.{param}"`` equal to, or ending in ``"." +``, an entry), without duplicates.

    A bare name (``gate_up_proj``, as PEFT writes for ``all-linear`` on MoE models) selects the
    parameter on whichever module has it: ``exists(module, param)`` says (the model; True or None
    from a base checkpoint); unknown, a known expert name is taken to live on an ``experts``
    module."""
    out: list[str] = []
    for t in target_parameters(cfg):
        mod_part, _, param = t.rpartition(".")
        if mod_part and not (module == mod_part or module.endswith("." + mod_part)):
            continue
        known = exists(module, param) if exists is not None else None
        if known is False or (
            known is None and not mod_part and param in REGISTRATION_ORDER and not module.endswith("experts")
        ):
            continue
        if param not in out:
            out.append(param)
    return out


def registration_order(params: list[str]) -> list[str]:
    """Known fused-expert names in their registration order, then any others as the config lists
    them (the engine replaces this with the model's real order)."""
    known = [p for p in REGISTRATION_ORDER if p in params]
    return known + [p for p in params if p not in known]


@dataclass
class ExpertKeys:
    """The LoRA keys (and shapes) of one targeted parameter ``module.param``."""

    module: str
    param: str
    depth: int  # 0: the outermost wrapper (``M.lora_A``), 1: ``M.base_layer.lora_A``...
    keys: dict[str, str] = field(default_factory=dict)  # role -> checkpoint key
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.module}.{self.param}"


def _depth(raw_path: str) -> int:
    return raw_path.count(".base_layer.") + int(raw_path.endswith(".base_layer"))


def split_expert_keys(
    shapes: dict[str, tuple[int, ...]],
    cfg: LoraAdapterConfig,
    dtypes: dict[str, str] | None = None,
    order: Callable[[str, list[str]], list[str]] | None = None,
    exists: Callable[[str, str], bool | None] | None = None,
) -> tuple[dict[str, ExpertKeys], dict[str, tuple[int, ...]], list[P.Problem]]:
    """Pull the keys of parameter-targeted modules out of ``shapes``: (``module.param`` ->
    ExpertKeys, the remaining keys for :func:`~adapterctl.core.adapter.keys.split_keys`, problems).

    ``order(module, params)`` gives the registration order of ``params`` on ``module``;
    ``exists`` as in :func:`params_of`."""
    if not target_parameters(cfg):
        return {}, dict(shapes), []
    order = order or (lambda _m, ps: registration_order(ps))
    dtypes = dtypes or {}
    found: dict[str, dict[int, dict[str, str]]] = {}  # module -> depth -> role -> key
    rest: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        stripped = strip_prefix(key)
        hit = next(((s, r) for s, r in LORA_SUFFIXES.items() if stripped.endswith(s)), None)
        raw = stripped[: -len(hit[0])] if hit else ""
        module = module_path_of(raw) if raw else ""
        if not hit or not module or not params_of(cfg, module, exists):
            rest[key] = shape
            continue
        found.setdefault(module, {}).setdefault(_depth(raw), {})[hit[1]] = key
    out: dict[str, ExpertKeys] = {}
    problems: list[P.Problem] = []
    for module, by_depth in found.items():
        params = order(module, params_of(cfg, module, exists))
        if sorted(by_depth) != list(range(len(params))):
            problems.append(
                P.error(
                    "expert_nesting",
                    f"{module}: target_parameters select {params} here, but the file "
                    f"holds {len(by_depth)} nested LoRA wrapper(s)",
                    "The keys do not follow PEFT's ParamWrapper nesting; save the adapter again.",
                )
            )
            continue
        # the guessed order first; another one only where the ranks say the guess is wrong
        for perm in [params, *(list(p) for p in permutations(params) if list(p) != params)]:
            eks = [_expert_keys(module, perm, d, roles, shapes, dtypes) for d, roles in by_depth.items()]
            if all(not check_expert_keys(ek, module_scaling(cfg, ek.path)[0], cfg) for ek in eks):
                break
        else:
            eks = [_expert_keys(module, params, d, roles, shapes, dtypes) for d, roles in by_depth.items()]
        out.update((ek.path, ek) for ek in eks)
    return out, rest, problems


def _expert_keys(
    module: str, params: list[str], depth: int, roles: dict[str, str], shapes: dict, dtypes: dict
) -> ExpertKeys:
    ek = ExpertKeys(module, params[len(params) - 1 - depth], depth)
    for role, key in roles.items():
        ek.keys[role] = key
        ek.shapes[role] = tuple(shapes[key])
        ek.dtypes[role] = dtypes.get(key, "")
    return ek


# ----- shapes -----------------------------------------------------------------------------------
def num_experts(a_shape: tuple[int, ...], r: int) -> int | None:
    """E from lora_A (r·E, in); None when r does not divide it."""
    return a_shape[0] // r if len(a_shape) == 2 and r > 0 and a_shape[0] % r == 0 else None


def expected_param_shape(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], r: int, transposed: bool, ndim: int = 3
) -> tuple[int, ...] | None:
    """The parameter lora_A (r·E, in) and lora_B (out, r·E) need: (E, out, in), or (E, in, out)
    for ``is_transposed`` experts, or (out, in) for a 2-D parameter (spec 5.6)."""
    e = num_experts(a_shape, r)
    if e is None or len(b_shape) != 2:
        return None
    if ndim == 2:
        return (b_shape[0], a_shape[1]) if e == 1 else None
    return (e, a_shape[1], b_shape[0]) if transposed else (e, b_shape[0], a_shape[1])


def check_expert_keys(ek: ExpertKeys, r: int, cfg: LoraAdapterConfig) -> list[P.Problem]:
    """The adapter's own consistency: both factors, r·E rows in A and r·E columns in B, and no
    feature ParamWrapper refuses."""
    a, b = ek.shapes.get("A"), ek.shapes.get("B")
    out = []
    bad = (
        [name for f, name in _REFUSED.items() if getattr(cfg, f)]
        + (["lora_B bias"] if "B_bias" in ek.keys else [])
        + (["DoRA magnitude"] if "magnitude" in ek.keys else [])
    )
    if bad:
        out.append(
            P.error(
                "expert_variant",
                f"{ek.path}: {', '.join(bad)} with target_parameters",
                "PEFT's ParamWrapper refuses these; save the adapter again.",
                error=UnsupportedError,
            )
        )
    if a is None or b is None:
        out.append(
            P.error(
                "unpaired_lora",
                f"{ek.path}: needs both lora_A and lora_B, has {sorted(ek.keys)}",
                "The file is incomplete; save the adapter again.",
            )
        )
        return out
    if len(a) != 2 or len(b) != 2 or num_experts(a, r) is None or b[1] != a[0]:
        out.append(
            P.error(
                "rank_mismatch",
                f"{ek.path}: config gives r={r} but lora_A {list(a)} / lora_B "
                f"{list(b)} are not (r·E, in) / (out, r·E)",
                "Fix r or rank_pattern in adapter_config.json to match the tensors.",
            )
        )
    return out


def check_param_shape(
    ek: ExpertKeys, r: int, base_shape: tuple[int, ...] | None, transposed: bool
) -> P.Problem | None:
    """Do the factors fit the base parameter (``None``: the base has no such parameter)?"""
    a, b = ek.shapes.get("A", ()), ek.shapes.get("B", ())
    if base_shape is None:
        return P.error(
            "module_not_in_base",
            f"{ek.path}: no such parameter in the base (lora_A {list(a)}, lora_B {list(b)})",
            "Is this adapter for another architecture?",
            error=IncompatibleBaseError,
        )
    need = expected_param_shape(a, b, r, transposed, len(base_shape))
    if need is None or tuple(base_shape) == need:
        return None
    layout = "(E, in, out)" if transposed else "(E, out, in)"
    return P.error(
        "shape_mismatch",
        f"{ek.path}: base parameter is {list(base_shape)} but lora_A "
        f"{list(a)} and lora_B {list(b)} with r={r} need {list(need)} "
        f"{layout if len(base_shape) == 3 else ''}".rstrip(),
        "The adapter was trained on a different model size.",
        error=IncompatibleBaseError,
    )


# ----- where a fused parameter lives in a checkpoint -------------------------------------------
#: transformers 5 fuses per-expert checkpoint tensors on load and splits them again on save
#: (transformers/conversion_mapping.py "mixtral": ``.block_sparse_moe.`` -> ``.mlp.``, w1 and w3
#: concatenated into gate_up_proj, w2 into down_proj; "qwen2_moe" (qwen3_moe, deepseek...):
#: gate_proj and up_proj into gate_up_proj). Each entry: the per-expert tensors, in the order
#: their rows are concatenated.
SPLIT_PARTS: dict[str, list[tuple[str, ...]]] = {
    "gate_up_proj": [("w1", "w3"), ("gate_proj", "up_proj")],
    "down_proj": [("w2",), ("down_proj",)],
}
_MODULE_RENAMES = ((".mlp.", ".block_sparse_moe."),)


@dataclass(frozen=True)
class ParamLocation:
    """A parameter ``(E, out, in)`` as a checkpoint stores it: one fused tensor (``fused``), or
    per expert e the keys ``split[e]`` whose (rows, in) tensors concatenate along rows."""

    shape: tuple[int, ...]
    fused: str | None = None
    split: tuple[tuple[str, ...], ...] = ()


def locate_param(path: str, shapes: dict[str, tuple[int, ...]]) -> ParamLocation | None:
    """Where parameter ``path`` (``model.layers.0.mlp.experts.gate_up_proj``) is stored in a
    checkpoint with these key shapes; None when it is not."""
    from adapterctl.io.folders.model_dir import find_checkpoint_key

    key = find_checkpoint_key(path, shapes)
    if key is not None:
        return ParamLocation(tuple(shapes[key]), fused=key)
    module, _, param = path.rpartition(".")
    modules = [module] + [module.replace(a, b) for a, b in _MODULE_RENAMES if a in module]
    for mod in modules[1:]:  # a renamed module, stored whole (Mixtral's router block_sparse_moe.gate)
        key = find_checkpoint_key(f"{mod}.{param}", shapes)
        if key is not None:
            return ParamLocation(tuple(shapes[key]), fused=key)
    for mod in modules:
        for parts in SPLIT_PARTS.get(param, []):
            split = []
            while True:
                keys = [find_checkpoint_key(f"{mod}.{len(split)}.{p}.weight", shapes) for p in parts]
                if not all(keys) or len({shapes[k][1:] for k in keys}) != 1:  # type: ignore[index]
                    break
                split.append(tuple(keys))
            if split:
                rows = sum(shapes[k][0] for k in split[0])  # type: ignore[index]
                first = shapes[split[0][0]]  # type: ignore[index]
                return ParamLocation((len(split), rows, *first[1:]), split=tuple(split))
    return None
