"""Format steps of ``convert``: dtype casting (spec 3). The serving cleanup (``--for-serving``)
is ``--for all --drop-unsupported`` now: for_engine.py."""

from __future__ import annotations

from dataclasses import replace

import torch

from adapterctl.core.convert.draft import AdapterDraft
from adapterctl.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_draft(draft: AdapterDraft, dtype: str) -> AdapterDraft:
    """Cast every floating tensor to ``dtype``. Steps before this one computed in float32, so
    this is the single rounding to the target dtype."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="Use float32, bfloat16 or float16.")
    target = DTYPES[dtype]
    tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in draft.tensors.items()}
    notes = draft.notes
    if target != torch.float32:
        notes += (f"PEFT upcasts {dtype} adapters to float32 when loading "
                  "(autocast_adapter_dtype=True), so only the file size changes there",)
    return replace(draft, tensors=tensors, steps=draft.steps + (f"dtype={dtype}",), notes=notes)
