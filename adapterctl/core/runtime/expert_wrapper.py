"""``target_parameters`` LoRA on a transformers model: PEFT's ParamWrapper, one wrapper per module.

PEFT nests one ``ParamWrapper`` per targeted parameter and, during the forward, substitutes the
parameter by ``W + ΔW`` (ΔW cast to W's dtype, spec 5.6) before the module's own forward runs.
:class:`ExpertsWrapper` does the same for every targeted parameter of its module at once, through
``torch.func.functional_call``: nothing is folded, so the base weights stay untouched and several
adapters combine by weighted sums of their deltas. A mixed batch (a different adapter per row)
cannot be split inside the experts (their tokens are flattened and routed), as in PEFT.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.lora.expert_delta import ExpertWeights, check_param, expert_delta
from adapterctl.core.lora.loaded import LoadedAdapter
from adapterctl.errors import UnsupportedError

_HALF = (torch.float16, torch.bfloat16)


class ExpertsWrapper(nn.Module):
    """Wraps the module that holds the targeted parameters (``mlp.experts``)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora = nn.ModuleDict()  # adapter name -> _Slot
        self.active: dict[str, float] = {}
        self.rows: dict[str, torch.Tensor] | None = None  # row_adapters' groups
        self.folded = False  # never folded: the delta is applied in each forward

    @property
    def transposed(self) -> bool:
        """(E, in, out) experts (PEFT reads the same attribute, set by transformers'
        ``use_experts_implementation(is_transposed=True)``)."""
        return bool(getattr(self.base_layer, "is_transposed", False))

    def add(self, name: str, weights: list[ExpertWeights]) -> None:
        self.lora[name] = _Slot(weights, _device(self.base_layer))

    def _weights(self) -> dict[str, float]:
        if self.rows is None:
            return {n: w for n, w in self.active.items() if n in self.lora}
        if self.rows:  # row_adapters: rows are gone once tokens are routed to experts
            raise UnsupportedError(
                "target_parameters (MoE expert) LoRA cannot give each batch row its own adapter: "
                "the experts see routed tokens, not rows (PEFT refuses mixed batches here too)",
                hint="Run the prompts of each adapter separately.",
            )
        return {}

    def forward(self, *args, **kwargs):
        weights = self._weights()
        if not weights:
            return self.base_layer(*args, **kwargs)
        params: dict[str, torch.Tensor] = {}
        for name, weight in weights.items():
            for pname, w in cast(_Slot, self.lora[name]).weights.items():
                base: torch.Tensor = getattr(self.base_layer, pname)
                delta = expert_delta(w, self.transposed, base.dim()).to(base.dtype)
                delta = delta if weight == 1.0 else delta * weight
                params[pname] = params.get(pname, base) + delta
        return torch.func.functional_call(self.base_layer, params, args, kwargs, strict=False)


class _Slot(nn.Module):
    """One adapter's factors on one wrapper, as parameters (``A.<param>``, ``B.<param>``)."""

    def __init__(self, weights: list[ExpertWeights], device: torch.device) -> None:
        super().__init__()
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.meta = {w.param: w for w in weights}
        for w in weights:  # half adapters become float32, PEFT's autocast_adapter_dtype (spec 3)
            self.A[w.param] = nn.Parameter(_cast(w.A, device), requires_grad=False)
            self.B[w.param] = nn.Parameter(_cast(w.B, device), requires_grad=False)

    @property
    def weights(self) -> dict[str, ExpertWeights]:
        return {
            p: ExpertWeights(w.module, w.param, w.depth, self.A[p], self.B[p], w.r, w.alpha, w.scaling)
            for p, w in self.meta.items()
        }


def _cast(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32 if t.dtype in _HALF else t.dtype)


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(recurse=False), None)
    return p.device if p is not None else torch.device("cpu")


def registration_order(module: nn.Module, params: list[str]) -> list[str]:
    """``params`` in the order the module registered them: PEFT nests its wrappers that way."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    return [n for n in names if n in params] + [p for p in params if p not in names]


def plan_experts(model: nn.Module, la: LoadedAdapter, find_module, unwrap) -> dict[str, list[ExpertWeights]]:
    """Module path -> the adapter's expert LoRAs on it, each named by the model's real parameter
    order (the loader guessed it from names); raises when a parameter is missing or misshapen."""
    by_module: dict[str, list[ExpertWeights]] = {}
    for w in la.experts.values():
        by_module.setdefault(w.module, []).append(w)
    out = {}
    for module_path, ws in by_module.items():
        current = find_module(model, module_path)
        base = unwrap(current)
        if current is not None and not isinstance(current, ExpertsWrapper) and base is not current:
            raise UnsupportedError(
                f"{la.source}: {module_path} already holds another adapter's "
                "module LoRA or saved copy; it cannot also take target_parameters"
            )
        if base is not None:
            real = registration_order(
                base,
                X.params_of(
                    la.config,
                    module_path,
                    lambda _m, p, b=base: isinstance(getattr(b, p, None), torch.Tensor),
                ),
            )
            ws = [_renamed(w, real[len(real) - 1 - w.depth], la) if w.depth < len(real) else w for w in ws]
        for w in ws:
            param = getattr(base, w.param, None) if base is not None else None
            check_param(
                w,
                param if isinstance(param, torch.Tensor) else None,
                bool(getattr(base, "is_transposed", False)),
                la.source,
            )
        out[module_path] = ws
    return out


def _renamed(w: ExpertWeights, param: str, la: LoadedAdapter) -> ExpertWeights:
    """``w`` as the LoRA of ``param`` (the model's order differs from the names' guess): its r,
    alpha and scaling follow that parameter's patterns (PEFT matches ``module.param``)."""
    if w.param == param:
        return w
    r, alpha, scaling = module_scaling(la.config, f"{w.module}.{param}")
    return ExpertWeights(w.module, param, w.depth, w.A, w.B, r, alpha, scaling)


def inject_experts(
    model: nn.Module, experts: dict[str, list[ExpertWeights]], name: str, kinds, devices: set, set_module
) -> int:
    """Put adapter ``name``'s expert LoRAs (:func:`plan_experts`) on one ExpertsWrapper per
    module; count them in ``kinds`` and ``devices``; return the parameters added."""
    params = 0
    for module_path, weights in experts.items():
        wrapper = model.get_submodule(module_path)
        if not isinstance(wrapper, ExpertsWrapper):
            wrapper = ExpertsWrapper(wrapper)
            set_module(model, module_path, wrapper)
        wrapper.add(name, weights)
        wrapper.train(wrapper.base_layer.training)  # new modules start in train mode
        kinds["experts"] += len(weights)
        devices.update(str(p.device) for p in wrapper.lora[name].parameters())
        params += sum(p.numel() for p in wrapper.lora[name].parameters())
    return params
