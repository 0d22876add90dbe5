"""Does an adapter fit a base model? Every tensor must land on a module of the right kind and shape.

Run before anything is changed, so a refused adapter leaves the model untouched. Problems are
collected and raised together, naming modules and shapes (spec 11.3 and 11.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from torch import nn

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter.problems import Problem
from adapterctl.core.adapter.targeting import select_targets
from adapterctl.core.lora.loaded import LoadedAdapter, LoraWeights
from adapterctl.core.runtime.expert_wrapper import ExpertsWrapper
from adapterctl.core.runtime.layers import LoraWrapper, layer_kind, lora_base_shape
from adapterctl.core.runtime.wrappers import SavedModuleWrapper, TokenRowsWrapper
from adapterctl.errors import IncompatibleBaseError, UnsupportedError

WRAPPERS = (LoraWrapper, ExpertsWrapper, SavedModuleWrapper, TokenRowsWrapper)


@dataclass
class FitPlan:
    """Where each part of the adapter goes."""

    #: module path -> (base layer, its kind)
    lora: dict[str, tuple[nn.Module, C.LayerKind]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # ckpt param path -> model param path
    saved_modules: dict[str, dict[str, str]] = field(default_factory=dict)  # module -> {param: ckpt}
    tokens: dict[str, nn.Module] = field(default_factory=dict)  # emb path -> embedding
    unmatched_targets: list[str] = field(default_factory=list)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    while isinstance(module, WRAPPERS):
        module = module.base_layer
    return module


def find_module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def base_module_paths(model: nn.Module) -> dict[str, nn.Module]:
    """Runtime path -> base module, hiding our wrappers (their base sits at the wrapper's path)."""
    out = {}
    for name, mod in model.named_modules():
        parts = name.split(".")
        if any(p in ("lora", "copies", "token_rows") for p in parts) or "base_layer" in parts:
            continue
        out[name] = unwrap(mod)
    return out


def check_module(path: str, w: LoraWeights, base: nn.Module | None) -> Problem | None:
    """The problem, or None when the LoRA tensors fit ``base`` (the rules: core/adapter/compat)."""
    if base is None:
        return C.missing_module(path, w.A.shape, w.B.shape)
    kind, layer = layer_kind(base), type(base).__name__
    problem = C.check_layer(path, w.kind, kind, layer)
    if problem is None and kind is not None:  # check_layer refuses kind None
        problem = C.check_shapes(
            path,
            kind,
            w.A.shape,
            w.B.shape,
            lora_base_shape(base, kind),
            None if w.bias is None else w.bias.shape,
            layer=layer,
        )
    return problem


def _saved_module_of(param_path: str, modules_to_save: list[str]) -> str | None:
    """The modules_to_save module a replacement belongs to (PEFT: plain ``endswith``, spec 4.3)."""
    module = param_path.rpartition(".")[0]
    for entry in modules_to_save:
        if module == entry or module.endswith(entry):
            return module
    return None


def find_param(model: nn.Module, path: str):
    """The parameter at ``path``, looking through our wrappers (``.base_layer``)."""
    module_path, _, pname = path.rpartition(".")
    mod = unwrap(find_module(model, module_path)) if module_path else model
    return None if mod is None else getattr(mod, pname, None)


def plan_fit(model: nn.Module, la: LoadedAdapter, source: str) -> FitPlan:
    """Map every tensor of ``la`` onto ``model``; raise naming everything that does not fit."""
    plan, problems = FitPlan(), []
    for path, w in la.modules.items():
        current = find_module(model, path)
        if isinstance(current, (SavedModuleWrapper, TokenRowsWrapper)):
            problems.append(
                f"{path}: already replaced by another adapter's modules_to_save / "
                "trainable tokens, cannot also hold LoRA"
            )
            continue
        base = unwrap(current)
        problem = check_module(path, w, base)
        kind = None if base is None else layer_kind(base)
        if problem:
            problems.append(problem.message)
        elif base is not None and kind is not None:  # check_module refuses a missing module or kind
            plan.lora[path] = (base, kind)
    mts = la.config.modules_to_save or []
    for ppath, tensor in la.replacements.items():
        module = _saved_module_of(ppath, mts)
        if module is not None and find_module(model, module) is not None:
            if isinstance(find_module(model, module), LoraWrapper):
                problems.append(f"{module}: holds LoRA of another adapter, cannot also be saved whole")
                continue
            plan.saved_modules.setdefault(module, {})[ppath[len(module) + 1 :]] = ppath
            target = find_param(model, ppath)
        else:
            target = find_param(model, ppath)
            plan.params[ppath] = ppath
        problem = C.check_replacement(ppath, tensor.shape, None if target is None else target.shape)
        if problem:
            problems.append(problem.message)
    for emb, (indices, rows) in la.trainable_tokens.items():
        base = unwrap(find_module(model, emb))
        if not isinstance(base, nn.Embedding):
            problems.append(
                f"{emb}: trainable tokens need an nn.Embedding, found "
                f"{type(base).__name__ if base is not None else 'no module'}"
            )
        elif problem := C.check_token_rows(
            emb, indices, rows.shape, (base.num_embeddings, base.embedding_dim)
        ):
            problems.append(problem.message)
        elif isinstance(find_module(model, emb), LoraWrapper):
            problems.append(f"{emb}: trainable tokens on a LoRA-wrapped embedding are not supported")
        else:
            plan.tokens[emb] = base
    if problems:
        raise IncompatibleBaseError(
            f"{source}: the adapter does not fit this base model ({describe(model)}; "
            f"{len(problems)} problem(s)): "
            + "; ".join(problems[:6])
            + (" ..." if len(problems) > 6 else ""),
            hint="Use the base model the adapter was trained on (see base_model_name_or_path).",
        )
    plan.unmatched_targets = unmatched_targets(model, la)
    return plan


def describe(model: nn.Module) -> str:
    """'LlamaForCausalLM (llama), linear modules like model.layers.0.self_attn.q_proj, ...'."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    paths = base_module_paths(model)
    linear = [p for p, m in paths.items() if layer_kind(m) not in (None, C.LayerKind.EMBEDDING)]
    names = list(dict.fromkeys(linear))[:4]
    head = type(model).__name__ + (f" ({model_type})" if model_type else "")
    return head + (f", with modules like {', '.join(names)}" if names else "")


def unmatched_targets(model: nn.Module, la: LoadedAdapter) -> list[str]:
    """Modules the config targets but the file holds no tensors for (PEFT warns: missing keys)."""
    paths = base_module_paths(model)
    linear = {p for p, m in paths.items() if getattr(layer_kind(m), "matrix", False)}
    out_emb = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        emb = unwrap(cast("nn.Module | None", get_out()))  # transformers' lm_head
        out_emb = next((p for p, m in paths.items() if m is emb), None)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = select_targets(la.config, list(paths), linear, out_emb, model_type)
    return [t for t in targets if t not in la.modules and layer_kind(paths[t]) is not None]


def require_float_base(path: str, base: nn.Module, init: str) -> None:
    if getattr(layer_kind(base), "quantized", False) or base.weight.device.type == "meta":
        raise UnsupportedError(
            f"{path}: init_lora_weights={init!r} needs the residual recomputed on a float, "
            "in-memory base weight; this layer is quantized or offloaded",
            hint="Load the base without --quantize and without offloading, or convert the adapter "
            "to plain LoRA first.",
        )
