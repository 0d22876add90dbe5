"""Tied embeddings in a merge: one stored table that is both the input embedding and lm_head
(spec 10.12).

On the attached model (PEFT's unmerged forward, and adapterctl's attach) the two ends stay two
modules over one tensor: LoRA or a modules_to_save copy on the embedding changes the input end
only, on lm_head the output end only; full replacements of the table (saved embedding layers) and
trainable-token rows reach both ends. The merged model must be that model, so a merge whose
changes differ between the two ends writes lm_head on its own and unties the config, and changes
that are the same at both ends (``ensure_weight_tying``: lm_head's LoRA is the embedding's,
transposed) are applied once to a table that stays shared.

PEFT's ``merge_and_unload`` instead adds every delta into the shared table, so both ends get the
embedding's and lm_head's changes (twice the delta with ``ensure_weight_tying``); ``merge
--tied-like-peft`` reproduces that for bit-compatibility with PEFT.
"""

from __future__ import annotations

import torch

from adapterctl.core.adapter.base_info import tied_embeddings
from adapterctl.core.lora.loaded import is_tied_pair
from adapterctl.errors import InvalidAdapterError

#: an entry's slots that act on one end of a tied table only (the others reach both ends)
OWN_SLOTS = ("loras", "bias_loras", "copy")
SHARED_SLOTS = ("replacement", "tokens")


#: the usual (output, input embedding) pairs, one per common layout; a checkpoint that matches one
#: needs nothing more (asking transformers means importing it and the model's module: seconds)
COMMON_TIES = tuple(
    ("lm_head.weight", name)
    for name in ("model.embed_tokens.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight")
)


def class_tied_keys(model_type: str | None) -> list[tuple[str, str]]:
    """The model class's ``_tied_weights_keys`` (output -> input embedding); [] for an unknown or
    custom architecture."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type or "", ""), None)
        tied = getattr(cls, "_tied_weights_keys", None)
        if isinstance(tied, dict) and tied:
            return list(tied.items())
    except Exception:  # unknown or custom architectures: the common layouts are all there is
        pass
    return []


def find_tie(config: dict, model_type: str | None, index, shapes: dict) -> tuple[str, str] | None:
    """(output param, embedding checkpoint key) when the checkpoint stores one shared table.

    As transformers loads it: the head is absent from the checkpoint under any name its
    conversion tables know, and the embedding is there. Where a common layout settles that by
    names and shapes alone (the embedding stored by its usual name, no head by name, and no other
    tensor of the table's shape that a table could rename into the head), transformers is not
    imported; otherwise its tables and the class's own tied keys decide (OPT, BLOOM...)."""
    if not tied_embeddings(config):  # as transformers decides (core/adapter/base_info.py)
        return None
    if "lm_head.weight" in index.keys:  # the usual untied layout: no need to ask transformers
        return None
    for head, emb in COMMON_TIES:
        emb_key = index.find_stored(emb)
        if emb_key is not None and index.find_stored(head) is None:
            if not any(k != emb_key and shape == shapes[emb_key] for k, shape in shapes.items()):
                return head, emb_key
    for head, emb in class_tied_keys(model_type) or COMMON_TIES:
        emb_key = index.find(emb)
        if index.find(head) is None and emb_key is not None:
            return head, emb_key
    return None


def split_tied(emb: dict, head: dict, names: tuple[str, str]) -> tuple[dict, dict | None]:
    """The tied table's ops as (embedding end, lm_head end); the second is None when both ends
    stay equal (one shared table). ``emb``/``head`` are plan entries (slot -> ops) registered
    under the embedding's key and under the output parameter's name."""
    shared = _shared(emb, head, names)
    emb_own = {k: emb[k] for k in OWN_SLOTS if emb.get(k)}
    head_own = {k: head[k] for k in OWN_SLOTS if head.get(k)}
    if not head_own and not emb_own:
        return shared, None
    if head_own and emb_own and same_at_both_ends(emb_own, head_own):
        return {**shared, **emb_own}, None
    return {**shared, **emb_own}, {**shared, **head_own}


def _shared(emb: dict, head: dict, names: tuple[str, str]) -> dict:
    out = {k: emb[k] for k in SHARED_SLOTS if k in emb}
    if "tokens" in head:
        out["tokens"] = list(out.get("tokens", [])) + list(head["tokens"])
    if "replacement" in head:
        if "replacement" in out and not torch.equal(out["replacement"][1], head["replacement"][1]):
            raise InvalidAdapterError(
                f"the adapter saves two different tables for {names[0]} and {names[1]}, which the "
                "base stores as one tied table",
                hint="Save the adapter again from the tied model "
                "(PEFT saves the one shared table under both names).",
            )
        out.setdefault("replacement", head["replacement"])
    return out


def same_at_both_ends(emb: dict, head: dict) -> bool:
    """True when lm_head's own changes equal the embedding's (ensure_weight_tying): the same
    modules_to_save table, or LoRA whose lm_head factors are the embedding's transposed
    (ΔH = s·B_h A_h = s·A_eᵀ B_eᵀ = ΔE)."""
    if set(emb) != set(head) or "bias_loras" in emb:
        return False
    if "copy" in emb and not torch.equal(emb["copy"][1], head["copy"][1]):
        return False
    loras_e, loras_h = emb.get("loras", []), head.get("loras", [])
    if len(loras_e) != len(loras_h):
        return False
    return all(
        e.adapter == h.adapter and h.kind == "linear" and is_tied_pair(e.weights, h.weights)
        for e, h in zip(loras_e, loras_h)
    )
