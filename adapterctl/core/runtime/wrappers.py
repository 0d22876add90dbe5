"""Whole-module and row replacements that adapters carry besides LoRA (spec 4.3).

- :class:`SavedModuleWrapper`: ``modules_to_save``. The original module stays; each adapter has
  its own trained copy, used while that adapter is active (PEFT's ModulesToSaveWrapper).
- :class:`TokenRowsWrapper`: ``trainable_token_indices``. The saved rows are full replacement rows
  of the embedding table: ``W_eff = W.index_copy(0, indices, rows)``; a tied lm_head follows the
  embedding's rows (PEFT's TrainableTokensLayer with ``tied_adapter``).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class _Passthrough(nn.Module):
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self._modules["base_layer"], name)


class SavedModuleWrapper(_Passthrough):
    """The original module plus one trained copy per adapter (``modules_to_save``)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.copies = nn.ModuleDict()
        self.active: dict[str, float] = {}
        self.rows: dict[str, torch.Tensor] | None = None

    def add_copy(self, name: str, params: dict[str, torch.Tensor]) -> None:
        """A deep copy of the original module with ``params`` (name -> tensor) loaded into it."""
        clone = copy.deepcopy(self.base_layer)
        with torch.no_grad():
            for pname, value in params.items():
                target = clone.get_parameter(pname)
                target.data = value.to(device=target.device, dtype=target.dtype).clone()
        for p in clone.parameters():
            p.requires_grad_(False)
        self.copies[name] = clone

    def current(self) -> nn.Module:
        for name in self.active:
            if name in self.copies:
                return self.copies[name]
        return self.base_layer

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.rows is None:
            return self.current()(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name, idx in self.rows.items():
            if name in self.copies:
                idx = idx.to(result.device)
                sub = self.copies[name](x.index_select(0, idx.to(x.device)), *args, **kwargs)
                result = result.index_copy(0, idx, sub.to(result.dtype))
        return result


class TokenRowsWrapper(_Passthrough):
    """Embedding (or tied lm_head) with per-adapter replacement rows (``trainable_token_indices``)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.token_rows = nn.ParameterDict()
        self.token_indices: dict[str, torch.Tensor] = {}
        self.active: dict[str, float] = {}
        self.rows: dict[str, torch.Tensor] | None = None

    def add_rows(self, name: str, indices: list[int], rows: torch.Tensor | nn.Parameter) -> None:
        device = _weight(self.base_layer).device
        if not isinstance(rows, nn.Parameter):
            # float32 like PEFT's autocast of trainable token rows (spec 3)
            dtype = torch.float32 if rows.dtype in (torch.float16, torch.bfloat16) else rows.dtype
            rows = nn.Parameter(rows.to(device=device, dtype=dtype), requires_grad=False)
        self.token_rows[name] = rows
        self.token_indices[name] = torch.tensor(indices, dtype=torch.long)

    def effective_weight(self, names) -> torch.Tensor:
        W = _weight(self.base_layer)
        for name in names:
            if name in self.token_rows:
                idx = self.token_indices[name].to(W.device)
                W = W.index_copy(0, idx, self.token_rows[name].to(W))
        return W

    def _run(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Embedding):
            out = F.embedding(
                x, W, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse
            )
            scale = getattr(base, "embed_scale", None)
            return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out
        return F.linear(x, W)  # a tied lm_head: PEFT uses F.linear without bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.rows is None:
            names = [n for n in self.active if n in self.token_rows]
            if not names:
                return self.base_layer(x, *args, **kwargs)
            return self._run(x, self.effective_weight(names))
        result = self.base_layer(x, *args, **kwargs)
        for name, idx in self.rows.items():
            if name in self.token_rows:
                idx = idx.to(result.device)
                sub = self._run(x.index_select(0, idx.to(x.device)), self.effective_weight([name]))
                result = result.index_copy(0, idx, sub.to(result.dtype))
        return result


def _weight(layer: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, layer.weight)  # an Embedding's or Linear's weight
