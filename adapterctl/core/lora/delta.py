"""Delta weights and merge maths (spec sections 6.1 to 6.3 and 1.7), shared by merge, convert and
the engine's merged fast path.

Every function here computes in float32 and returns float32: callers round once to the target
dtype (``W' = round(W.float() + ΔW)``), PEFT's default "unsafe" merge for Linear and Conv.
"""

from __future__ import annotations

import torch

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.lora.loaded import LoraWeights
from adapterctl.errors import UnsupportedError

F32 = torch.float32


def delta_weight(w: LoraWeights, kind: LayerKind | None = None, device=None) -> torch.Tensor:
    """ΔW = s·B@A in the base weight's layout, float32 (LoRA, Hu et al. 2021; spec 6.1).

    ``kind`` is the base layer's kind (default: the tensors' own, ``w.kind``). Conv1D (GPT-2)
    stores W as (in, out), so its delta is transposed; the LoRA tensors themselves keep the Linear
    layout. Embedding tables are (V, d) while A_e is (r, V): ΔW = (B_e A_e)^T s.
    """
    kind = kind or w.kind
    A = w.A.to(device=device, dtype=F32)
    B = w.B.to(device=device, dtype=F32)
    if kind is LayerKind.EMBEDDING:
        return (B @ A).T * w.scaling
    if kind is LayerKind.CONV:
        if B.shape[1] != A.shape[0]:
            raise UnsupportedError(
                f"{w.path}: grouped conv LoRA (groups > 1) cannot be merged",
                hint="PEFT refuses this too; use the adapter unmerged.",
            )
        # (Cout, r) x (r, Cin, k...) -> (Cout, Cin, k...)
        return torch.einsum("or,ri...->oi...", B.flatten(1), A) * w.scaling
    delta = (B @ A).mul_(w.scaling)  # in place on the fresh product: same values, no 2nd buffer
    return delta.T if kind.fan_in_fan_out else delta


def bias_delta(w: LoraWeights, device=None) -> torch.Tensor | None:
    """lora_bias: the bias of lora_B sits inside the scaling (PEFT >= 0.16, #2489)."""
    if w.bias is None:
        return None
    return w.bias.to(device=device, dtype=F32) * w.scaling


def dora_scale(
    W: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, kind: LayerKind
) -> torch.Tensor:
    """DoRA's factor m/||W+ΔW|| (Liu et al. 2024; spec 6.3), float32, shaped to broadcast on W.

    ``W`` is the unmerged base weight (PEFT >= 0.21 takes the norm on it, #3608). The norm runs
    over each output row; for Conv1D that is a column of the stored (in, out) weight, for
    Embedding a column (embedding dim) of the (V, d) table, for conv all dims but the first.
    """
    Wf = W.to(F32) + delta.to(F32)
    m = magnitude.to(device=Wf.device, dtype=F32)
    if kind is LayerKind.CONV:
        norm = Wf.flatten(1).norm(p=2, dim=1)
        return (m.flatten() / norm).view(-1, *([1] * (Wf.dim() - 1)))
    if kind is LayerKind.EMBEDDING or kind.fan_in_fan_out:
        return (m / Wf.norm(p=2, dim=0)).view(1, -1)  # (d,) / rows of W^T
    return (m / Wf.norm(p=2, dim=1)).view(-1, 1)


def fold_lora(
    cur: torch.Tensor, base0: torch.Tensor, w: LoraWeights, kind: LayerKind, weight: float = 1.0, device=None
) -> torch.Tensor:
    """One adapter folded into the float32 weight ``cur`` (the one kernel of merge and the
    engine's fold; spec 6.2, 6.3). Returns the new weight, ``cur`` itself where it can.

    LoRA: ``cur + weight·ΔW``, added in place. DoRA: ``m ⊙ (cur+ΔW)/||base0+ΔW||`` with the norm
    on the unmerged base ``base0`` (PEFT >= 0.21, #3608), and a weight moves the layer that
    fraction of the way there, as the attached forward does. ``base0`` must not alias ``cur``.
    """
    delta = delta_weight(w, kind, device)
    if w.magnitude is not None:
        full = (cur + delta) * dora_scale(base0, delta, w.magnitude, kind)
        return full if weight == 1.0 else cur + (full - cur) * weight
    return cur.add_(delta if weight == 1.0 else delta.mul_(weight))


def fold_lora_bias(cur: torch.Tensor, w: LoraWeights, weight: float = 1.0, device=None) -> torch.Tensor:
    """The lora_B bias folded into the float32 base bias ``cur``: ``cur + weight·s·b_B``."""
    bd = bias_delta(w, device)
    if bd is None:
        return cur
    return cur + (bd if weight == 1.0 else bd * weight)


def kasa_truncated(W: torch.Tensor, r: int) -> torch.Tensor:
    """KaSA's base (Jiang et al. 2024, arXiv:2412.06071): W without its r smallest singular
    components, as PEFT's ``KasaLinearVariant._truncate_base_weight`` computes it (float32 SVD of
    the (out, in) weight, (U_p·S_p) @ Vh_p, rounded to W's dtype). Linear layers only."""
    out_f, in_f = W.shape
    if r >= min(out_f, in_f):
        raise UnsupportedError(
            f"KaSA needs r={r} below min(in, out) = {min(out_f, in_f)}", hint="PEFT refuses this adapter too."
        )
    U, S, Vh = torch.linalg.svd(W.detach().to(F32), full_matrices=False)
    keep = min(out_f, in_f) - r
    return ((U[:, :keep] * S[:keep]) @ Vh[:keep, :]).to(W.dtype)


def mutated_init(
    W: torch.Tensor, r: int, scaling: float, init: str, fan_in_fan_out: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Recompute PiSSA / OLoRA's initial (A0, B0) and the residual base W - s·B0@A0 (spec 1.7).

    PiSSA (Meng et al. 2024): full SVD of W (as (out, in)) in float32, A0 = sqrt(S_r/s) Vh_r,
    B0 = U_r sqrt(S_r/s). OLoRA (Büyükakyüz 2024): QR of W in float32, A0 = R[:r], B0 = Q[:, :r].
    Returns float32 (A0, B0) and the residual rounded to W's dtype, in W's layout. ``"kasa"``: the
    base KaSA trains on (:func:`kasa_truncated`), with no initial factors (None, None).
    """
    if W.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UnsupportedError(
            f"{init} residual needs a float base weight, got {W.dtype}",
            hint="Load the base unquantized to recompute the residual.",
        )
    if init == "kasa":
        return None, None, kasa_truncated(W, r)
    if init == "olora":
        Wf = W.to(F32)
        Q, R = torch.linalg.qr(Wf)
        A0, B0 = R[:r].contiguous(), Q[:, :r].contiguous()
        return A0, B0, (Wf - scaling * B0 @ A0).to(W.dtype)
    if init != "pissa":
        raise UnsupportedError(f"init_lora_weights={init!r} cannot be recomputed exactly")
    Wf = W.to(F32)
    Wf = Wf.T if fan_in_fan_out else Wf
    U, S, Vh = torch.linalg.svd(Wf, full_matrices=False)
    Sr = S[:r] / scaling
    A0 = torch.diag(torch.sqrt(Sr)) @ Vh[:r]
    B0 = U[:, :r] @ torch.diag(torch.sqrt(Sr))
    res = Wf - scaling * B0 @ A0
    return A0, B0, (res.T if fan_in_fan_out else res).to(W.dtype)
