"""Load an adapter folder into tensors grouped per module (spec sections 3, 4 and 11).

The safetensors keys are authoritative: every tensor must land on a module or a base parameter,
or loading fails naming the keys. Shared by the engine (attach/generate), merge and convert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapterctl.core.adapter.compat import LayerKind, lora_kind
from adapterctl.core.adapter.config import (
    LoraAdapterConfig,
    check_lora_type,
    is_safe_adapter_name,
    read_adapter_config,
)
from adapterctl.core.adapter.problems import raise_first_error
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.adapter.validate import check_tensors, config_problems, token_indices, weights_problems
from adapterctl.core.adapter.variants import block_diagonal_factor
from adapterctl.core.lora.expert_delta import ExpertWeights, build_experts
from adapterctl.errors import InvalidAdapterError, UsageError
from adapterctl.io.folders.adapter_dir import AdapterFiles, locate_adapter_files


@dataclass
class LoraWeights:
    """The LoRA tensors of one adapted module, in the file's layout (A (r, in), B (out, r))."""

    path: str
    #: the tensors' layout: LINEAR (for a Linear or a Conv1D base: only the base can tell),
    #: EMBEDDING or CONV; the base layer's own kind comes from compat or the engine
    kind: LayerKind
    A: torch.Tensor
    B: torch.Tensor
    r: int
    alpha: float
    scaling: float
    bias: torch.Tensor | None = None  # lora_B bias (lora_bias=True)
    magnitude: torch.Tensor | None = None  # DoRA

    def __post_init__(self) -> None:
        self.kind = LayerKind(self.kind)  # "linear" from a library caller becomes the enum


@dataclass
class LoadedAdapter:
    name: str
    config: LoraAdapterConfig
    files: AdapterFiles
    modules: dict[str, LoraWeights]
    #: base parameter path -> full replacement tensor (modules_to_save, biases, saved embeddings)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    #: embedding module path -> (token indices, replacement rows (len(indices), dim))
    trainable_tokens: dict[str, tuple[list[int], torch.Tensor]] = field(default_factory=dict)
    #: ``module.param`` -> target_parameters LoRA (fused MoE experts; core/lora/expert_delta.py)
    experts: dict[str, ExpertWeights] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.files.source


def is_tied_pair(emb: LoraWeights, head: LoraWeights) -> bool:
    """True when ``head``'s LoRA is ``emb``'s transposed (PEFT's ``ensure_weight_tying``: lm_head's
    lora_A is the embedding's lora_embedding_B.T, lora_B its lora_embedding_A.T), so the two ends
    of a tied table get the same ΔW: s·B_h A_h = s·A_eᵀ B_eᵀ = (s·B_e A_e)ᵀ."""
    return (
        emb.kind == "embedding"
        and head.kind == "linear"
        and emb.magnitude is None
        and head.magnitude is None
        and head.bias is None
        and emb.scaling == head.scaling
        and head.A.shape == emb.B.T.shape
        and head.B.shape == emb.A.T.shape
        and torch.equal(head.A, emb.B.T)
        and torch.equal(head.B, emb.A.T)
    )


def tied_pairs(modules: dict[str, LoraWeights]) -> list[tuple[str, str]]:
    """(embedding path, output-layer path) of every :func:`is_tied_pair` in an adapter."""
    embs = [p for p, w in modules.items() if w.kind == "embedding"]
    return [(e, h) for e in embs for h, w in modules.items() if is_tied_pair(modules[e], w)]


def read_adapter_tensors(files: AdapterFiles, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of the weights file; legacy .bin only through ``torch.load(weights_only=True)``."""
    raise_first_error(weights_problems(files))  # the message names the folder
    assert files.weights is not None  # weights_problems raised on a missing weights file
    if files.weights_format == "safetensors":
        from safetensors.torch import load_file

        from adapterctl.io.safetensors.header import read_safetensors_header

        read_safetensors_header(files.weights)  # validates before anything is allocated
        try:
            return load_file(str(files.weights), device=str(device))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise InvalidAdapterError(f"{files.weights}: cannot read tensors: {err}") from err
    try:
        state = torch.load(str(files.weights), map_location=device, weights_only=True)
    except Exception as err:
        raise InvalidAdapterError(
            f"{files.weights}: cannot be loaded safely ({type(err).__name__}); only plain tensor "
            "dicts are accepted from pickle files",
            hint="Re-save the adapter with safetensors (PEFT's default) in a trusted environment.",
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidAdapterError(f"{files.weights}: is not a dict of tensors")
    return state


def load_adapter(
    folder: str | Path, name: str = "default", source: str | None = None, device: str | torch.device = "cpu"
) -> LoadedAdapter:
    """Read and validate an adapter folder. Raises AdapterctlError subclasses on bad input."""
    if not is_safe_adapter_name(name):
        raise UsageError(
            f"adapter name {name!r} is not allowed", hint="Use letters, digits, '.', '_' and '-' only."
        )
    files = locate_adapter_files(folder, source)
    cfg = read_adapter_config(files.config)
    check_lora_type(cfg, files.source)
    raise_first_error(config_problems(cfg), files.source)
    return build_adapter(name, cfg, files, read_adapter_tensors(files, device))


def build_adapter(
    name: str, cfg: LoraAdapterConfig, files: AdapterFiles, tensors: dict[str, torch.Tensor]
) -> LoadedAdapter:
    """The tensors grouped per module, once :func:`~adapterctl.core.adapter.validate.check_tensors`
    (the rules inspect reports) found nothing wrong with them."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    check = (
        check_tensors(cfg, shapes, where=files.weights.name) if files.weights else check_tensors(cfg, shapes)
    )
    raise_first_error(check.problems, files.source)
    experts = build_experts(cfg, check.experts, tensors)
    modules = {}
    for path, mk in check.layout.modules.items():  # training-only keys are read past
        A, B = tensors[mk.keys["A"]], tensors[mk.keys["B"]]
        block = block_diagonal_factor(cfg, path)
        if block:  # BD-LoRA: the stored diagonal blocks become the matrix the forward uses
            A, B = _block_diagonal(block, A, B)
        r, alpha, scaling = module_scaling(cfg, path)
        if "kasa_diag" in mk.keys:  # KaSA: ΔW = s·B·diag(d)·A (PEFT: lora_B(lora_A(x) * d)), so
            B = B * tensors[mk.keys["kasa_diag"]].to(B.dtype)  # B·diag(d) is a plain LoRA's B
        modules[path] = LoraWeights(
            path,
            lora_kind(mk.embedding, A.shape),
            A,
            B,
            r,
            alpha,
            scaling,
            bias=tensors.get(mk.keys.get("B_bias", "")),
            magnitude=tensors.get(mk.keys.get("magnitude", "")),
        )
    replacements = {p: tensors[k] for p, k in check.layout.replacements.items()}
    tokens = {
        emb: (token_indices(cfg, emb) or [], tensors[key])
        for emb, key in check.layout.trainable_tokens.items()
    }
    return LoadedAdapter(name, cfg, files, modules, replacements, tokens, experts)


def _block_diagonal(
    block: tuple[str, int], A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-LoRA (core/adapter/variants.py): ``torch.block_diag`` of the n stored row blocks, as
    PEFT's ``BlockDiagonalLinear.weight_as_blockdiagonal_matrix``; exact (the zeros add nothing).
    The blocks were checked by core/adapter/validate.py."""
    role, n = block
    full = torch.block_diag(*(A if role == "A" else B).chunk(n, dim=0))
    return (full, B) if role == "A" else (A, full)
