"""Where merge puts target_parameters (MoE expert) LoRA: each expert's ΔW into the stored tensor
that holds it (spec 5.6). A checkpoint stores a fused parameter whole (gpt-oss:
``mlp.experts.gate_up_proj`` (E, in, out)) or per expert (Mixtral: ``block_sparse_moe.experts.e.
w1/w3/w2``, Qwen3-MoE: ``mlp.experts.e.gate_proj/up_proj/down_proj``; transformers fuses them on
load, core/adapter/expert_keys.locate_param); the maths is core/lora/expert_delta.apply_expert_ops."""

from __future__ import annotations

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter.problems import as_error
from adapterctl.core.lora.expert_delta import ExpertOp
from adapterctl.core.lora.loaded import LoadedAdapter
from adapterctl.errors import IncompatibleBaseError


def add_expert_ops(i: int, ad: LoadedAdapter, shapes: dict, model_type: str | None, ops: dict) -> None:
    """Record, per stored tensor key, the expert slices adapter ``i`` adds to it."""
    transposed = model_type in X.TRANSPOSED_EXPERTS
    for path, w in ad.experts.items():
        where = X.locate_param(path, shapes)
        if where is None:
            raise IncompatibleBaseError(
                f"{ad.source}: target_parameters LoRA on {path} lands nowhere: the base checkpoint "
                "has no such parameter (fused, or per expert)",
                hint="Is this adapter for another model? Check with: adapterctl inspect ADAPTER --base BASE",
            )
        ek = X.ExpertKeys(w.module, w.param, w.depth, shapes={"A": tuple(w.A.shape), "B": tuple(w.B.shape)})
        problem = X.check_param_shape(ek, w.r, where.shape, transposed)
        if problem:
            raise as_error(problem, ad.source)
        if where.fused is not None:
            ops.setdefault(where.fused, {}).setdefault("experts", []).append(
                ExpertOp(i, w, transposed and len(where.shape) == 3)
            )
            continue
        for e, keys in enumerate(where.split):  # (rows, in) tensors stacked along the rows
            r0 = 0
            for key in keys:
                r1 = r0 + shapes[key][0]
                ops.setdefault(key, {}).setdefault("experts", []).append(ExpertOp(i, w, False, e, (r0, r1)))
                r0 = r1
