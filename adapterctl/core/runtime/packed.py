"""Lean module trees for generation: while a run lasts, LoRA wrappers are swapped for cheaper
modules and put back afterwards.

* Folded run: each folded wrapper is replaced by its base layer (its weight already holds the
  delta), so a decode step runs exactly the base model's modules.
* Unmerged run (one adapter or one combination for every row, not folded): each plain LoRA
  wrapper is replaced by a :class:`LeanLoraLayer` holding only the active adapters' tensors: the
  wrapper's forward, operation for operation, without its per-call lookups and branches.
* Mixed batch (rows on different adapters): each plain LoRA layer computes every row's delta in
  two matmuls over the adapters' stacked ranks, as Punica / S-LoRA batch them (Chen et al. 2023,
  Sheng et al. 2023): ``h = x A_cat^T`` (all ranks), ``h *= mask`` (row i keeps only its adapter's
  ranks, times that adapter's scaling), ``delta = h B_cat^T``. The rows of one adapter get
  ``s·B(A(x))`` in float32, rounded once onto the base output: PEFT's ``adapter_names=`` maths,
  with two matmuls per layer instead of a gather/scatter per adapter. Layers this does not cover
  (DoRA, lora_bias, embeddings, convolutions) keep the engine's per-row path.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from adapterctl.core.runtime.layers import BASE_ROW, LoraWrapper


class PackedRowsLayer(nn.Module):
    """A base layer plus the stacked A and B of several adapters; ``mask`` picks per row."""

    def __init__(self, wrapper: LoraWrapper, names: list[str]) -> None:
        super().__init__()
        self.base_layer = wrapper.base_layer
        slots = [(n, wrapper.slot(n)) for n in names if n in wrapper.lora]
        self.A = torch.cat([s.A for _, s in slots])  # (R, in): all ranks, adapter after adapter
        self.B = torch.cat([s.B for _, s in slots], dim=1)  # (out, R)
        self.layout = tuple((n, s.r, float(s.scaling)) for n, s in slots)
        self.mask: torch.Tensor | None = None  # (batch, R), set for each batch

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        assert self.mask is not None, "PackedRows.set_rows runs before each batch"
        mask = self.mask.view((x.shape[0],) + (1,) * (x.dim() - 2) + (-1,))
        h = F.linear(x.to(self.A.dtype), self.A) * mask
        # the delta in float32, rounded once to the base output dtype (PEFT's mixed-batch order)
        return result + F.linear(h, self.B).to(result.dtype)


class LeanLoraLayer(nn.Module):
    """A base layer plus the active adapters' (A, B, bias, s, weight): ``LoraWrapper.forward``'s
    maths for plain LoRA (spec 5.1): each delta in float32, summed onto the base output, one
    rounding at the end."""

    def __init__(self, wrapper: LoraWrapper) -> None:
        super().__init__()
        self.base_layer = wrapper.base_layer
        self.factors = [
            (s.A, s.B, s.bias, s.scaling, float(w))
            for n, w in wrapper.active.items()
            if n in wrapper.lora
            for s in (wrapper.slot(n),)
        ]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        for A, B, bias, scaling, weight in self.factors:
            out = F.linear(F.linear(x.to(A.dtype), A), B, bias) * scaling
            result = result + (out if weight == 1.0 else out * weight)
        return result.to(dtype)


def leanable(wrapper: LoraWrapper) -> bool:
    """Plain LoRA on an unquantized matrix layer (what :class:`LeanLoraLayer` computes)."""
    slots = [wrapper.slot(n) for n in wrapper.active if n in wrapper.lora]
    if not wrapper.kind.matrix or wrapper.kind.quantized or wrapper.folded or not slots:
        return False
    if wrapper.rows is not None or (wrapper.training and any(s.dropout > 0 for s in slots)):
        return False
    return all(s.magnitude is None for s in slots)


@contextmanager
def lean_wrappers(model: nn.Module):
    """An unmerged run on the active adapters: plain LoRA wrappers swapped for
    :class:`LeanLoraLayer`, the rest kept (DoRA, embeddings, convolutions, quantized layers)."""
    layers = {
        path: LeanLoraLayer(mod)
        for path, mod in model.named_modules()
        if isinstance(mod, LoraWrapper) and leanable(mod)
    }
    with swap_modules(model, layers):
        yield


def packable(wrapper: LoraWrapper, names: list[str]) -> bool:
    slots = [wrapper.slot(n) for n in names if n in wrapper.lora]
    if not wrapper.kind.matrix or wrapper.folded or not slots:  # Linear, Conv1D, bnb: F.linear
        return False
    if wrapper.training and any(s.dropout > 0 for s in slots):  # dropout: the engine's path
        return False
    same = len({(s.A.dtype, s.A.device) for s in slots}) == 1
    return same and all(s.magnitude is None and s.bias is None for s in slots)


def row_mask(layout: tuple, keys: list[str], device, dtype) -> torch.Tensor:
    """(batch, R): row i holds adapter keys[i]'s scaling on that adapter's ranks, zeros elsewhere
    (a base row, or an adapter this layer does not have, adds nothing)."""
    starts, offset = {}, 0
    for name, r, scaling in layout:
        starts[name] = (offset, offset + r, scaling)
        offset += r
    mask = torch.zeros((len(keys), offset), dtype=dtype)
    for i, key in enumerate(keys):
        if key != BASE_ROW and key in starts:
            lo, hi, scaling = starts[key]
            mask[i, lo:hi] = scaling
    return mask.to(device)


class PackedRows:
    """Swaps the packable wrappers of ``model`` for :class:`PackedRowsLayer` while in use."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model = model
        self.layers: dict[str, PackedRowsLayer] = {
            path: PackedRowsLayer(mod, names)
            for path, mod in model.named_modules()
            if isinstance(mod, LoraWrapper) and packable(mod, names)
        }

    def set_rows(self, keys: list[str]) -> None:
        cache: dict[tuple, torch.Tensor] = {}
        for layer in self.layers.values():
            key = (layer.layout, layer.A.device, layer.A.dtype)
            if key not in cache:
                cache[key] = row_mask(layer.layout, keys, layer.A.device, layer.A.dtype)
            layer.mask = cache[key]

    @contextmanager
    def installed(self):
        with swap_modules(self.model, self.layers):
            yield self


@contextmanager
def bypass_wrappers(model: nn.Module, folded_only: bool = True):
    """Run the base layers directly (no wrapper call per layer): the folded wrappers (their base
    weight holds the delta), or with ``folded_only=False`` every LoRA wrapper (a run with no
    active adapter, where a wrapper returns its base layer's output unchanged)."""
    layers = {
        path: mod.base_layer
        for path, mod in model.named_modules()
        if isinstance(mod, LoraWrapper) and (mod.folded or not folded_only)
    }
    with swap_modules(model, layers):
        yield


@contextmanager
def swap_modules(model: nn.Module, replacements: Mapping[str, nn.Module]):
    """Put ``replacements`` (path -> module) into the tree; the originals go back on exit."""
    originals = {}
    try:
        for path, new in replacements.items():
            parent, child = _parent(model, path)
            originals[path] = getattr(parent, child)
            setattr(parent, child, new)
        yield
    finally:
        for path, old in originals.items():
            parent, child = _parent(model, path)
            setattr(parent, child, old)


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, child = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), child
