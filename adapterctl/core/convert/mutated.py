"""Mutated-init conversion (spec 7): an adapter trained from a PiSSA/OLoRA/CorDA/LoRA-GA
initialisation, which moved the base, rewritten as a plain LoRA for the original base."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter.config import (
    BASE_MUTATING_INITS,
    RANDOMISED_INITS,
    RECOMPUTABLE_INITS,
    parse_adapter_config,
)
from adapterctl.core.adapter.problems import as_error
from adapterctl.core.convert.draft import (
    AdapterDraft,
    check_same_scaling,
    module_keys,
    refuse_kasa,
    view_adapter,
)
from adapterctl.errors import (
    IncompatibleBaseError,
    InvalidAdapterError,
    UnsupportedError,
)
from adapterctl.io.checkpoint.reader import CheckpointReader


def doubled_config(doc: dict, use_rslora: bool) -> dict:
    """r, rank_pattern ×2 and alpha, alpha_pattern ×2 (×√2 with rsLoRA), so every module keeps
    s = alpha/r (alpha/√r). PEFT refuses rsLoRA with patterns because it doubles alpha_pattern;
    scaling every alpha by √2 is exact, so we accept it (spec 7.1, 10.11)."""
    f = 2**0.5 if use_rslora else 2
    out = dict(doc)
    out["r"] = int(doc.get("r") or 8) * 2
    out["lora_alpha"] = (doc.get("lora_alpha") or 8) * f
    out["rank_pattern"] = {k: int(v) * 2 for k, v in (doc.get("rank_pattern") or {}).items()}
    out["alpha_pattern"] = {k: v * f for k, v in (doc.get("alpha_pattern") or {}).items()}
    out["init_lora_weights"] = True
    return out


def init_factors_from_adapter(init: AdapterDraft) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A0, B0) per module from the initial adapter PEFT saved before training."""
    return {
        p: (w.A, w.B) for p, w in view_adapter(init).modules.items() if w.kind is not C.LayerKind.EMBEDDING
    }


def init_factors_from_base(
    draft: AdapterDraft, base_dir: str | Path, base_source: str | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Recompute PiSSA (full SVD) / OLoRA's (A0, B0) from the base weights, one tensor at a time
    (io/checkpoint/reader.py; the model is never built). Spec 1.7; maths in ``delta.mutated_init``."""
    from adapterctl.core.lora.delta import mutated_init
    from adapterctl.io.folders.model_dir import locate_model_files

    view = view_adapter(draft)
    kind = view.config.init_kind
    if kind not in RECOMPUTABLE_INITS:
        raise UnsupportedError(
            f"{draft.source}: init_lora_weights={view.config.init_lora_weights!r} cannot be "
            "recomputed from the base" + (" (randomised SVD)" if kind in RANDOMISED_INITS else ""),
            hint="Pass the initial adapter saved before training: --pissa-init INIT.",
        )
    files = locate_model_files(base_dir, base_source)
    out = {}
    with CheckpointReader(files) as weights:
        for path, w in view.modules.items():
            if w.kind is not C.LayerKind.LINEAR:
                continue  # embeddings are never mutated (convert_mutated zero-pads them)
            W = weights.load_param(path + ".weight", draft.source)
            layer = C.base_layer_kind(
                False, w.A.shape, w.B.shape, W.shape, files.model_type, view.config.fan_in_fan_out
            )
            problem = C.check_shapes(path, layer, w.A.shape, w.B.shape, W.shape)
            if problem:
                raise as_error(problem, draft.source)
            A0, B0, _ = mutated_init(W, w.r, w.scaling, kind, fan_in_fan_out=layer.fan_in_fan_out)
            assert A0 is not None and B0 is not None, "PiSSA and OLoRA have initial factors (KaSA has none)"
            if tuple(A0.shape) != tuple(w.A.shape) or tuple(B0.shape) != tuple(w.B.shape):
                raise IncompatibleBaseError(
                    f"{path}: base weight {list(W.shape)} gives initial A/B {list(A0.shape)}/"
                    f"{list(B0.shape)}, the adapter has {list(w.A.shape)}/{list(w.B.shape)}",
                    hint="Give the base model the adapter was trained on.",
                )
            out[path] = (A0, B0)
    return out


def check_mutated_source(draft: AdapterDraft) -> list[str]:
    """Refuse inits that cannot be converted; return notes for the merely suspicious ones."""
    cfg = parse_adapter_config(draft.config, draft.source)
    refuse_kasa(cfg, draft.source, "its initialisation")
    if cfg.init_kind == "loftq":
        raise UnsupportedError(
            f"{draft.source}: LoftQ adapters replace the base with a quantised "
            "copy; subtracting an initial adapter does not undo that",
            hint="Use the adapter with the LoftQ base model PEFT saved.",
        )
    if cfg.init_kind not in BASE_MUTATING_INITS:
        return [
            f"config says init_lora_weights={cfg.init_lora_weights!r}; assuming the adapter "
            "was trained from the given initial weights (PEFT's docs set it to true)"
        ]
    return []


def convert_mutated(
    draft: AdapterDraft, init: dict[str, tuple[torch.Tensor, torch.Tensor]], init_source: str
) -> AdapterDraft:
    """ΔW = s·(B A − B0 A0) = s·[B | −B0]·[A ; A0] on the original base (spec 7).

    Better than PEFT's ``subtract_mutated_init``: extras (modules_to_save, biases, trainable
    tokens, lora_B biases) keep their keys; DoRA keeps its magnitude, which is exact because
    W_res + s·B A = W + s·(B A − B0 A0) is the very matrix DoRA normalises; embedding LoRA is
    zero-padded because PEFT never mutates an embedding table (its initialiser falls back to
    the default), so its trained factors already act on the original table.
    """
    notes = check_mutated_source(draft)
    view = view_adapter(draft)
    keys = module_keys(draft)
    tensors = dict(draft.tensors)
    for path, w in view.modules.items():
        if w.kind is C.LayerKind.CONV:
            raise UnsupportedError(
                f"{draft.source}: {path}: conv LoRA is not supported by mutated-init conversion"
            )
        if w.kind is C.LayerKind.EMBEDDING:
            A0, B0 = torch.zeros_like(w.A), torch.zeros_like(w.B)
        else:
            A0, B0 = _init_for(init, path, w, init_source)
        tensors[keys[path].keys["A"]] = torch.cat([w.A, A0.to(w.A.dtype)], dim=0)
        tensors[keys[path].keys["B"]] = torch.cat([w.B, -B0.to(w.B.dtype)], dim=1)
    extra = sorted(set(init) - set(view.modules))
    if extra:
        notes.append(
            f"{len(extra)} modules of the initial adapter are not in the trained one "
            f"(ignored): {', '.join(extra[:3])}"
        )
    config = doubled_config(draft.config, view.config.use_rslora)
    if config.get("use_bdlora"):  # the factors written are full (expanded) matrices
        config["use_bdlora"] = None
    out = replace(
        draft,
        config=config,
        tensors=tensors,
        steps=draft.steps + ("mutated-init",),
        notes=draft.notes + tuple(notes),
    )
    check_same_scaling(view, view_adapter(out))
    return out


def _init_for(init: dict, path: str, w, init_source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if path not in init:
        raise InvalidAdapterError(
            f"{init_source}: has no initial weights for module {path}",
            hint="Give the folder saved right after get_peft_model, before training, for this same adapter.",
        )
    A0, B0 = init[path]
    if tuple(A0.shape) != tuple(w.A.shape) or tuple(B0.shape) != tuple(w.B.shape):
        raise InvalidAdapterError(
            f"{init_source}: {path}: initial A/B are {list(A0.shape)}/{list(B0.shape)} but the "
            f"trained ones are {list(w.A.shape)}/{list(w.B.shape)}",
            hint="The initial adapter belongs to another training run or rank.",
        )
    return A0, B0
