"""LoRA wrapper modules: one wrapper per adapted base layer, holding any number of named adapters.

Forward (spec 5): ``result = base(x)``; each active adapter adds its delta computed in float32
(half-precision adapter tensors are upcast when attached, PEFT's ``autocast_adapter_dtype``); the
sum is rounded **once** to the base result dtype at the end, as PEFT's ``lora.Linear`` does.
bitsandbytes layers round each adapter's output to the result dtype before adding it (spec 5.8).

Also here: per-row adapter selection (mixed batches, spec 5) and fold/unfold (merging the active
adapters into the base weight in float32 with one rounding, restoring the exact original after).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.lora.delta import fold_lora, fold_lora_bias
from adapterctl.core.lora.loaded import LoraWeights
from adapterctl.errors import UnsupportedError

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch
F32 = torch.float32
_HALF = (torch.float16, torch.bfloat16)


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of a built layer, or None when LoRA cannot wrap it (the shape-only answer, for
    headers, is :func:`adapterctl.core.adapter.compat.base_layer_kind`)."""
    name = type(module).__name__
    if name == "Linear4bit":
        return LayerKind.BNB4
    if name == "Linear8bitLt":
        return LayerKind.BNB8
    if isinstance(module, nn.Embedding):
        return LayerKind.EMBEDDING
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return LayerKind.CONV
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if name == "Conv1D" and hasattr(module, "nf"):
        return LayerKind.CONV1D_GPT2
    return None


def lora_base_shape(module: nn.Module, kind: LayerKind) -> tuple[int, ...]:
    """The layer's weight shape in its stored layout, from its attributes: bnb weights are packed
    and a grouped conv stores Cin/groups, while LoRA's A reads all Cin (compat.expected_base_shape)."""
    # Any: the attributes are the layer class's own (torch types Module.__getattr__ as Tensor | Module)
    m: Any = module
    if kind is LayerKind.EMBEDDING:
        return (m.num_embeddings, m.embedding_dim)
    if kind is LayerKind.CONV:
        return (m.out_channels, m.in_channels, *m.kernel_size)
    if kind is LayerKind.CONV1D_GPT2:
        return (m.weight.shape[0], m.nf)
    return (m.out_features, m.in_features)


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight as a float tensor: bnb weights dequantized as PEFT does (spec 6.4)."""
    # Any: bnb's Params4bit/Int8Params carry quant_state/SCB, unknown to torch's Tensor type
    w: Any = layer.weight
    cls = type(w).__name__
    if cls == "Params4bit":
        import bitsandbytes.functional as bnb_f

        return bnb_f.dequantize_4bit(w.data, w.quant_state)
    if cls == "Int8Params":
        import bitsandbytes.functional as bnb_f

        state: Any = layer.state
        scb = state.SCB if state.SCB is not None else w.SCB
        return bnb_f.int8_vectorwise_dequant(w.data, scb.to(w.data.device))
    if w.device.type == "meta":
        return offloaded_weight(layer, "weight")
    return w


def offloaded_weight(layer: nn.Module, name: str) -> torch.Tensor:
    """A parameter of an accelerate-offloaded layer (meta on the module), read from its hook."""
    hook: Any = getattr(layer, "_hf_hook", None)
    wmap = getattr(hook, "weights_map", None)
    if wmap is None:
        raise UnsupportedError(f"{name} of an offloaded layer is not reachable (no accelerate hook)")
    return wmap[name].to(hook.execution_device)


def execution_device(layer: nn.Module) -> torch.device:
    """Where the layer computes: its weight's device, or the accelerate hook's execution device."""
    hook = getattr(layer, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    w = getattr(layer, "weight", None)
    return w.device if w is not None else torch.device("cpu")


def _autocast(t: torch.Tensor, device) -> torch.Tensor:
    """Half-precision adapter tensors become float32 (PEFT autocast_adapter_dtype=True, spec 3)."""
    return t.to(device=device, dtype=F32 if t.dtype in _HALF else t.dtype)


class LoraSlot(nn.Module):
    """One adapter's tensors on one layer, in the file's layout (A (r, in), B (out, r))."""

    def __init__(self, w: LoraWeights, device, dropout: float = 0.0) -> None:
        super().__init__()
        self.path, self.kind, self.r, self.alpha, self.scaling = w.path, w.kind, w.r, w.alpha, w.scaling
        self.dropout = dropout
        self.A = nn.Parameter(_autocast(w.A, device), requires_grad=False)
        self.B = nn.Parameter(_autocast(w.B, device), requires_grad=False)
        self.bias = None if w.bias is None else nn.Parameter(_autocast(w.bias, device), requires_grad=False)
        self.magnitude = (
            None if w.magnitude is None else nn.Parameter(_autocast(w.magnitude, device), requires_grad=False)
        )

    def weights(self) -> LoraWeights:
        return LoraWeights(
            self.path, self.kind, self.A, self.B, self.r, self.alpha, self.scaling, self.bias, self.magnitude
        )


@dataclass
class _Folded:
    weight: torch.Tensor
    bias: torch.Tensor | None


class LoraWrapper(nn.Module):
    """A base layer plus named LoRA adapters (Linear, Conv1D, Embedding, ConvNd, bnb 4/8-bit)."""

    def __init__(self, base_layer: nn.Module, kind: LayerKind) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.fan_in_fan_out = kind.fan_in_fan_out  # from the layer type, never the config (1.4)
        self.lora = nn.ModuleDict()
        self.active: dict[str, float] = {}
        self.rows: dict[str, torch.Tensor] | None = None
        self._folded: _Folded | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "lora"):
                raise
            return getattr(self._modules["base_layer"], name)

    def slot(self, name: str) -> LoraSlot:
        """Adapter ``name``'s tensors on this layer (``lora`` holds only :class:`LoraSlot`)."""
        return cast(LoraSlot, self.lora[name])

    # ----- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self._folded is not None or not len(self.lora):
            return result
        if self.rows is not None:
            return self._forward_rows(x, result, self.rows)
        dtype = result.dtype
        for name, weight in self.active.items():
            if name not in self.lora:
                continue
            slot = self.slot(name)
            if slot.magnitude is not None:
                new = self._dora(slot, x, result)
                new = new if weight == 1.0 else result + (new - result) * weight
                result = new.to(dtype) if self.kind.quantized else new
                continue
            out = self._lora_out(slot, x)
            if weight != 1.0:
                out = out * weight
            if self.kind.quantized:
                out = out.to(dtype)  # PEFT's bnb layers round each adapter's output (spec 5.8)
            result = result + out
        # one rounding of base + Σ deltas to the base dtype (spec 5)
        return result.to(dtype)

    def _forward_rows(
        self, x: torch.Tensor, result: torch.Tensor, rows: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mixed batch: row i gets adapter rows[i] (PEFT ``adapter_names=``), grouped by adapter."""
        dtype = result.dtype
        for name, idx in rows.items():
            if name not in self.lora:
                continue
            idx = idx.to(result.device)
            slot, sub_x, sub = (
                self.slot(name),
                x.index_select(0, idx.to(x.device)),
                result.index_select(0, idx),
            )
            if slot.magnitude is not None:
                new = self._dora(slot, sub_x, sub).to(dtype)
            elif self.kind is LayerKind.EMBEDDING:
                new = (sub + self._lora_out(slot, sub_x)).to(dtype)  # PEFT: in-place add, one rounding
            else:
                new = sub + self._lora_out(slot, sub_x).to(dtype)  # PEFT rounds the delta first here
            result = result.index_copy(0, idx, new)
        return result

    def _lora_out(self, slot: LoraSlot, x: torch.Tensor) -> torch.Tensor:
        """s·B(A(x)) (+ s·b_B) in the adapter dtype (spec 5.1 to 5.3)."""
        # Any here and below: the wrapped layer's own attributes (padding_idx, stride...) by its kind
        base: Any = self.base_layer
        if self.kind is LayerKind.EMBEDDING:
            after_a = F.embedding(
                x,
                slot.A.T,
                base.padding_idx,
                base.max_norm,
                base.norm_type,
                base.scale_grad_by_freq,
                base.sparse,
            )
            out = (after_a @ slot.B.T) * slot.scaling
            scale = getattr(base, "embed_scale", None)
            return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out
        x = x.to(slot.A.dtype)
        if self.training and slot.dropout > 0:
            x = F.dropout(x, slot.dropout, training=True)
        if self.kind is LayerKind.CONV:
            conv = _conv_fn(slot.A)
            h = conv(x, slot.A, stride=base.stride, padding=base.padding)
            return conv(h, slot.B, slot.bias, groups=base.groups) * slot.scaling
        return F.linear(F.linear(x, slot.A), slot.B, slot.bias) * slot.scaling

    def _dora(self, slot: LoraSlot, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """DoRA (Liu et al. 2024) as PEFT's forward: the new running result (spec 5.4, 5.5).

        ``result`` is the running sum, so a DoRA adapter after another adapter rescales that one's
        output too, exactly as PEFT's variant forward does."""
        base: Any = self.base_layer
        s = slot.scaling
        assert slot.magnitude is not None, "only DoRA slots come here"
        if self.kind is LayerKind.EMBEDDING:
            lora_w = (slot.A.T @ slot.B.T).T  # (d, V)
            norm = torch.linalg.norm(base.weight.T + s * lora_w.detach(), dim=1).detach()
            k = slot.magnitude / norm
            after_a = F.embedding(
                x,
                slot.A.T,
                base.padding_idx,
                base.max_norm,
                base.norm_type,
                base.scale_grad_by_freq,
                base.sparse,
            )
            dora = k * (after_a @ slot.B.T) * s
            scale = getattr(base, "embed_scale", None)
            if isinstance(scale, torch.Tensor):
                dora = dora * scale.to(dora.dtype)
            return k * result + dora
        x = x.to(slot.A.dtype)
        weight = dequantized_weight(base).to(x.dtype)
        bias = base.bias if getattr(base, "bias", None) is not None else None
        if bias is not None and bias.device.type == "meta":
            bias = offloaded_weight(base, "bias")
        bare = None
        if self.training and slot.dropout > 0:
            # PEFT: with active dropout the base part is recomputed on the dropped input, no bias
            x = F.dropout(x, slot.dropout, training=True)
            bare = self._bare_base(x, weight)
        if self.kind is LayerKind.CONV:
            r = slot.A.shape[0]
            lora_w = torch.mm(slot.B.view(-1, r), slot.A.view(r, -1)).reshape(weight.shape)
            w = weight + s * lora_w.detach()
            norm = w.norm(p=2, dim=tuple(range(1, w.dim())), keepdim=True).transpose(1, 0).detach()
            k = slot.magnitude / norm
            base_r = result if bias is None else result - bias.view((1, -1) + (1,) * (result.dim() - 2))
            base_r = base_r if bare is None else bare
            conv = _conv_fn(slot.A)
            lora_r = conv(
                conv(x, slot.A, stride=base.stride, padding=base.padding),
                slot.B,
                slot.bias,
                groups=base.groups,
            )
            return result + ((k - 1) * base_r + k * lora_r * s)
        eye = torch.eye(slot.A.shape[1], device=slot.A.device, dtype=slot.A.dtype)
        lora_w = F.linear(F.linear(eye, slot.A), slot.B).T.to(x.dtype)
        wt = weight.T if self.fan_in_fan_out else weight
        norm = torch.linalg.norm(wt + s * lora_w.detach(), dim=1).to(wt.dtype).detach()
        k = (slot.magnitude / norm).view(1, -1)
        base_r = (result if bias is None else result - bias) if bare is None else bare
        lora_r = F.linear(F.linear(x, slot.A), slot.B)
        return result + ((k - 1) * base_r + k * lora_r * s)

    def _bare_base(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base: Any = self.base_layer
        if self.kind is LayerKind.CONV:
            return _conv_fn(weight)(x, weight, None, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, weight.T if self.fan_in_fan_out else weight)

    # ----- fold / unfold ---------------------------------------------------------------------
    @property
    def folded(self) -> bool:
        return self._folded is not None

    def fold(self) -> None:
        """Merge the active adapters into the base weight: float32 sum, one rounding (spec 6.2).

        The merged weight is a new tensor swapped into the parameter; the original stays as it
        was (never written: a memory-mapped checkpoint keeps its clean pages) and comes back on
        :meth:`unfold`, exactly."""
        if self._folded is not None or not any(n in self.lora for n in self.active):
            return
        base: Any = self.base_layer
        if self.kind.quantized or base.weight.device.type == "meta":
            raise UnsupportedError(
                f"cannot fold adapters into a quantized or offloaded layer ({type(base).__name__})",
                hint="Use the unfolded forward.",
            )
        W = base.weight
        bias = getattr(base, "bias", None)
        active = [(self.slot(n).weights(), w) for n, w in self.active.items() if n in self.lora]
        bf = None if bias is None else bias.detach().to(F32)
        for lw, weight in active:
            if lw.bias is not None:
                if bf is None:
                    raise UnsupportedError(
                        f"{lw.path}: lora_bias on a base layer without a bias cannot be folded"
                    )
                bf = fold_lora_bias(bf, lw, weight, device=W.device)
        if self.kind is LayerKind.LINEAR and all(lw.magnitude is None for lw, _ in active):
            merged = fold_rows(W.detach(), active)
        else:
            merged = self._fold_whole(W.detach(), active)
        self._folded = _Folded(W.data, None if bias is None else bias.data)
        W.data = merged
        if bf is not None and bias is not None:  # bf is only set from a bias
            bias.data = bf.to(bias.dtype)

    def _fold_whole(self, W: torch.Tensor, active: list) -> torch.Tensor:
        """Any layer kind, DoRA included: the whole weight in float32 at once."""
        W0 = W.to(F32)
        dora = any(lw.magnitude is not None for lw, _ in active)
        # W0 is read again by DoRA's norm, and a float32 W0 *is* W: both stay intact
        Wf = W0.clone() if dora or W0.data_ptr() == W.data_ptr() else W0
        for lw, weight in active:
            Wf = fold_lora(Wf, W0, lw, self.kind, weight, device=W.device)
        return Wf.to(W.dtype)

    def unfold(self) -> None:
        """Restore the exact original base weight (kept aside while folded)."""
        if self._folded is None:
            return
        base: Any = self.base_layer
        base.weight.data = self._folded.weight
        if self._folded.bias is not None:
            base.bias.data = self._folded.bias
        self._folded = None


#: Rows of a weight folded at once: float32 blocks of about this many bytes stay in cache.
FOLD_BLOCK_BYTES = 1 << 20


def fold_rows(W: torch.Tensor, active: list) -> torch.Tensor:
    """Plain LoRA on a Linear weight (out, in), folded a block of rows at a time: for each block,
    ``W[rows].float() + Σ w·(s·B[rows] @ A)``, rounded once into a new tensor of W's dtype. The
    same operations, in the same order, as :func:`fold_lora` on the whole weight (a block's
    matmul may round a last float32 bit unlike the whole one's, as any two BLAS calls may),
    without whole-weight float32 temporaries: the blocks stay in cache."""
    out_f, in_f = W.shape
    rows = max(1, min(out_f, FOLD_BLOCK_BYTES // (4 * in_f)))
    factors = [
        (lw.A.to(device=W.device, dtype=F32), lw.B.to(device=W.device, dtype=F32), lw.scaling, weight)
        for lw, weight in active
    ]
    merged = torch.empty_like(W)
    acc_buf = torch.empty((rows, in_f), dtype=F32, device=W.device)
    delta_buf = torch.empty((rows, in_f), dtype=F32, device=W.device)
    with torch.no_grad():
        for lo in range(0, out_f, rows):
            hi = min(lo + rows, out_f)
            acc, delta = acc_buf[: hi - lo], delta_buf[: hi - lo]
            acc.copy_(W[lo:hi])
            for A, B, scaling, weight in factors:
                torch.matmul(B[lo:hi], A, out=delta).mul_(scaling)
                acc.add_(delta if weight == 1.0 else delta.mul_(weight))
            merged[lo:hi].copy_(acc)  # the one rounding to the base dtype
    return merged


def _conv_fn(A: torch.Tensor):
    return {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[A.dim()]
