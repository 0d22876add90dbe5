"""``layer_replication`` (spec 1.4): PEFT rebuilds the decoder's layer list before injecting LoRA,
stacking the ``[start, end)`` ranges of the map; the copies share the base weights and each copy
gets its own LoRA, saved under the new layer indices (peft/tuners/tuners_utils.py
``replicate_layers``, ``clone_module``).

The engine does the same on the loaded model (and undoes it on detach); merge writes the
replicated layers as layers of their own (core/merge/plan.py), which is the attached model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from adapterctl.errors import InvalidAdapterError, UnsupportedError


@dataclass
class Replication:
    """What :func:`replicate_layers` changed, for :func:`restore_layers`."""

    owner: nn.Module
    attr: str
    original: nn.ModuleList
    num_hidden_layers: int | None


def find_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """PEFT's lookup: ``model[.model]*.layers``, ``.bert.encoder.layer`` or ``.h``."""
    owner: Any = model  # Any: .model/.bert are the architecture's own attributes
    while hasattr(owner, "model"):
        owner = owner.model
    if hasattr(owner, "bert"):
        owner = owner.bert
    for path in ("layers", "encoder.layer", "h"):
        parent_path, _, attr = path.rpartition(".")
        parent = owner.get_submodule(parent_path) if parent_path else owner
        if isinstance(getattr(parent, attr, None), nn.ModuleList):
            return parent, attr, getattr(parent, attr)
    raise UnsupportedError(
        f"layer_replication: {type(model).__name__} has no layer list where PEFT "
        "looks for one (model.layers, bert.encoder.layer, h)",
        hint="PEFT cannot build this adapter on this architecture either.",
    )


def replicate_layers(model: nn.Module, sources: list[int]) -> Replication:
    """Replace the layer list by copies of ``sources`` sharing their parameters (PEFT's
    ``clone_module(share_weights=True)``), with ``layer_idx`` renumbered for the KV cache."""
    owner, attr, layers = find_layers(model)
    if max(sources) >= len(layers):
        raise InvalidAdapterError(
            f"layer_replication names layer {max(sources)}, the model has {len(layers)}",
            hint="Use the base the adapter was trained on.",
        )
    new = []
    for j, i in enumerate(sources):
        clone = copy.deepcopy(layers[i])
        for name, sub in layers[i].named_modules():
            target = clone.get_submodule(name)
            for pname, param in sub.named_parameters(recurse=False):
                target.register_parameter(pname, param)
        for sub in clone.modules():
            if hasattr(sub, "layer_idx"):
                cast(Any, sub).layer_idx = j  # an int attribute, not a Module's tensor or submodule
        new.append(clone)
    config: Any = getattr(model, "config", None)
    before = getattr(config, "num_hidden_layers", None)
    setattr(owner, attr, nn.ModuleList(new))
    if before is not None:
        config.num_hidden_layers = len(new)
    return Replication(owner, attr, layers, before)


def restore_layers(rep: Replication, model: nn.Module) -> None:
    setattr(rep.owner, rep.attr, rep.original)
    if rep.num_hidden_layers is not None:
        cast(Any, model).config.num_hidden_layers = rep.num_hidden_layers
