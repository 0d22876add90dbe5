"""The maths of ``target_parameters`` LoRA on (fused MoE expert) parameters, spec 5.6 and 6.1.

PEFT's ParamWrapper (peft/tuners/lora/layer.py) keeps ``lora_A (r·E, in)`` with rows expert-major
(reshaped ``(E, r, in)``) and ``lora_B (out, r·E)`` with columns rank-major, expert-minor (reshaped
``(out, r, E)``): the two factors index experts differently. ``ΔW[e] = s · B[:, :, e] @ A[e]``,
laid out ``(E, out, in)``, or ``(E, in, out)`` when the experts module is ``is_transposed``
(gpt-oss). A 2-D parameter is plain ``s · B @ A`` (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter import problems as P
from adapterctl.core.adapter.config import LoraAdapterConfig
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.errors import InvalidAdapterError


@dataclass
class ExpertWeights:
    """The LoRA of one targeted parameter ``module.param``, in the file's layout."""

    module: str
    param: str
    depth: int  # ParamWrapper nesting depth of its keys (0: outermost), see adapter/expert_keys.py
    A: torch.Tensor  # (r·E, in)
    B: torch.Tensor  # (out, r·E)
    r: int
    alpha: float
    scaling: float

    @property
    def path(self) -> str:
        return f"{self.module}.{self.param}"

    @property
    def experts(self) -> int:
        return self.A.shape[0] // self.r


def build_experts(
    cfg: LoraAdapterConfig, found: dict[str, X.ExpertKeys], tensors: dict[str, torch.Tensor]
) -> dict[str, ExpertWeights]:
    """The target_parameters LoRAs (``module.param`` -> weights) of the keys
    :func:`~adapterctl.core.adapter.validate.check_tensors` grouped and checked."""
    out: dict[str, ExpertWeights] = {}
    for path, ek in found.items():
        r, alpha, scaling = module_scaling(cfg, path)  # PEFT: patterns match "module.param"
        A, B = tensors[ek.keys["A"]], tensors[ek.keys["B"]]
        out[path] = ExpertWeights(ek.module, ek.param, ek.depth, A, B, r, alpha, scaling)
    return out


def expert_delta(w: ExpertWeights, transposed: bool, ndim: int = 3) -> torch.Tensor:
    """ΔW of the whole parameter, in its stored layout; the matmul first, then ``· s`` (as PEFT's
    ``ParamWrapper.get_delta_weight``), in the adapter dtype."""
    if ndim == 2:
        return (w.B @ w.A) * w.scaling
    e = w.experts
    a = w.A.reshape(e, w.r, w.A.shape[-1])  # (E, r, in)
    b = w.B.reshape(w.B.shape[0], w.r, e)  # (out, r, E)
    pattern = "ore,eri->eio" if transposed else "ore,eri->eoi"
    return torch.einsum(pattern, b, a) * w.scaling


def expert_slice_delta(w: ExpertWeights, expert: int) -> torch.Tensor:
    """ΔW of one expert as (out, in): what merge adds to that expert's slice (spec 5.6)."""
    a = w.A[expert * w.r : (expert + 1) * w.r]  # rows expert-major
    b = w.B[:, expert :: w.experts]  # columns rank-major, expert-minor
    return (b @ a) * w.scaling


def check_param(w: ExpertWeights, param: torch.Tensor | None, transposed: bool, source: str) -> None:
    """Raise when ``param`` (the model's parameter) is missing or has another shape."""
    ek = X.ExpertKeys(w.module, w.param, w.depth, shapes={"A": tuple(w.A.shape), "B": tuple(w.B.shape)})
    problem = X.check_param_shape(ek, w.r, None if param is None else tuple(param.shape), transposed)
    if problem is not None:
        raise P.as_error(problem, source)
    if param is not None and param.dim() not in (2, 3):
        raise InvalidAdapterError(
            f"{source}: {w.path} is a {param.dim()}-D parameter; "
            "target_parameters LoRA adapts 2-D and 3-D ones (PEFT too)"
        )


# ----- merge: each expert's slice of a stored tensor -------------------------------------------
@dataclass(frozen=True)
class ExpertOp:
    """Add adapter ``adapter``'s ΔW of expert ``expert`` to a stored tensor: the whole fused
    parameter (``expert`` None, every expert in turn) or, for a checkpoint that stores experts
    apart, rows ``rows`` of that expert's ΔW (out, in) (w1 / w3 halves of gate_up_proj)."""

    adapter: int
    weights: ExpertWeights
    transposed: bool = False
    expert: int | None = None
    rows: tuple[int, int] | None = None


def apply_expert_ops(
    cur: torch.Tensor,
    ops: tuple[ExpertOp, ...],
    stored_dtype: torch.dtype,
    adapter_weights,
    device: torch.device,
) -> torch.Tensor:
    """``cur`` (float32) plus every op's delta, one expert slice at a time: the peak beyond the
    tensor itself is one expert's ΔW. Each ΔW is cast to the stored dtype first, as PEFT's
    ParamWrapper.merge adds ``get_delta_weight`` already in the parameter's dtype (spec 6.2)."""
    for op in ops:
        w = ExpertWeights(
            op.weights.module,
            op.weights.param,
            op.weights.depth,
            op.weights.A.to(device),
            op.weights.B.to(device),
            op.weights.r,
            op.weights.alpha,
            op.weights.scaling,
        )
        scale = adapter_weights[op.adapter]
        experts = range(w.experts) if op.expert is None else [op.expert]
        for e in experts:
            d = expert_slice_delta(w, e)
            if op.rows is not None:
                d = d[op.rows[0] : op.rows[1]]
            target = cur[e] if op.expert is None and cur.dim() == 3 else cur
            d = d.T if op.transposed else d
            d = d.to(stored_dtype).to(torch.float32) if stored_dtype.is_floating_point else d
            target.add_(d if scale == 1.0 else d * scale)
    return cur
