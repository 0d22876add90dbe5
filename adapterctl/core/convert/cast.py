"""Format steps of ``convert``: dtype casting (spec 3). The serving cleanup (``--for-serving``)
is ``--for all --drop-unsupported`` now: for_engine.py."""

from __future__ import annotations

from dataclasses import replace

import torch

from adapterctl.core.convert.draft import AdapterDraft
from adapterctl.io.checkpoint.stored import torch_dtype
from adapterctl.io.dtypes import check_dtype


def cast_draft(draft: AdapterDraft, dtype: str) -> AdapterDraft:
    """Cast every floating tensor to ``dtype``. Steps before this one computed in float32, so
    this is the single rounding to the target dtype."""
    target = torch_dtype(check_dtype(dtype, auto=False))
    tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in draft.tensors.items()}
    notes = draft.notes
    if target != torch.float32:
        notes += (
            f"PEFT upcasts {dtype} adapters to float32 when loading "
            "(autocast_adapter_dtype=True), so only the file size changes there",
        )
    return replace(draft, tensors=tensors, steps=draft.steps + (f"dtype={dtype}",), notes=notes)
