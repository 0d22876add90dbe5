"""``layer_replication`` in a merge: the attached model (core/runtime/replicate.py, as PEFT's
``replicate_layers``) has more layers than the base, copies that share the base weights, each with
its own LoRA. A merged checkpoint cannot share weights between layers, so it writes every copy as
a layer of its own (its source layer's tensors plus that copy's deltas) and says how many layers
the config now has: the attached model, exactly. (PEFT's merge_and_unload adds every copy's delta
into the one shared weight instead, spec 10.16c.)
"""

from __future__ import annotations

import re
from collections import Counter

from adapterctl.errors import IncompatibleBaseError, UnsupportedError
from adapterctl.io.checkpoint.stored import StoredTensor

#: a checkpoint key inside the decoder's layer list: (prefix, index, rest)
LAYER_KEY = re.compile(r"^((?:.*\.)?(?:layers|h)\.)(\d+)\.(.+)$")


def replicate_entries(
    entries: list[tuple[str, StoredTensor]], sources: list[int], config: dict, shown: str
) -> tuple[list[tuple[str, StoredTensor]], dict]:
    """(output key, stored tensor) pairs with the layer list rebuilt as ``sources`` says, and the
    config.json fields that change (num_hidden_layers, layer_types)."""
    found = [
        (m.group(1), int(m.group(2)), m.group(3), s) for key, s in entries if (m := LAYER_KEY.match(key))
    ]
    if not found:
        raise UnsupportedError(
            f"{shown}: layer_replication: the checkpoint has no layer list (model.layers.N, h.N) to replicate"
        )
    prefix = Counter(p for p, *_ in found).most_common(1)[0][0]
    layers: dict[int, list[tuple[str, StoredTensor]]] = {}
    for p, i, rest, s in found:
        if p == prefix:
            layers.setdefault(i, []).append((rest, s))
    missing = sorted(set(sources) - set(layers))
    if missing:
        raise IncompatibleBaseError(
            f"{shown}: layer_replication copies layer {missing[0]}, the base has {len(layers)} layers",
            hint="Use the base the adapter was trained on.",
        )
    block = [(f"{prefix}{j}.{rest}", s) for j, i in enumerate(sources) for rest, s in layers[i]]
    out, placed = [], False
    for key, s in entries:
        m = LAYER_KEY.match(key)
        if m and m.group(1) == prefix:
            if not placed:
                out += block
                placed = True
            continue
        out.append((key, s))
    updates: dict[str, object] = {"num_hidden_layers": len(sources)}
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == len(layers):
        updates["layer_types"] = [config["layer_types"][i] for i in sources]
    return out, updates
