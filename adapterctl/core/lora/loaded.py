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
from adapterctl.core.adapter.keys import split_keys
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.adapter.variants import block_diagonal_factor
from adapterctl.core.lora.expert_delta import ExpertWeights, build_experts
from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError
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
    if files.weights is None:
        raise NotFoundError(
            f"{files.source}: no adapter_model.safetensors (or adapter_model.bin)",
            hint="Copy or download the weights file too.",
        )
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
    cfg.require_supported(files.source)
    tensors = read_adapter_tensors(files, device)
    if not tensors:
        raise InvalidAdapterError(
            f"{files.weights}: holds no tensors", hint="Save the adapter again after training."
        )
    return build_adapter(name, cfg, files, tensors)


def build_adapter(
    name: str, cfg: LoraAdapterConfig, files: AdapterFiles, tensors: dict[str, torch.Tensor]
) -> LoadedAdapter:
    experts, tensors = build_experts(files.source, cfg, tensors)
    layout = split_keys({k: tuple(v.shape) for k, v in tensors.items()})  # training-only keys
    if layout.unknown:  # are read past
        raise InvalidAdapterError(
            f"{files.source}: keys that match no LoRA tensor name: {', '.join(layout.unknown[:5])}",
            hint="Is this adapter from another tool or a newer PEFT version?",
        )
    modules = {}
    for path, mk in layout.modules.items():
        if "A" not in mk.keys or "B" not in mk.keys:
            raise InvalidAdapterError(
                f"{files.source}: {path} has {sorted(mk.keys)} but needs both lora_A and lora_B",
                hint="The file is incomplete; save it again.",
            )
        A, B = tensors[mk.keys["A"]], tensors[mk.keys["B"]]
        block = block_diagonal_factor(cfg, path)
        if block:  # BD-LoRA: the stored diagonal blocks become the matrix the forward uses
            A, B = _block_diagonal(files.source, path, block, A, B)
        r, alpha, scaling = module_scaling(cfg, path)
        if A.dim() < 2 or B.dim() < 2 or A.shape[0] != r:
            raise InvalidAdapterError(
                f"{files.source}: {path}: config gives r={r} but lora_A has shape {list(A.shape)}",
                hint="Fix r or rank_pattern in adapter_config.json to match the tensors.",
            )
        if B.shape[1] != r:  # B is (out, r, ...) for every layer kind (spec 4.1)
            raise InvalidAdapterError(
                f"{files.source}: {path}: lora_B has shape {list(B.shape)} but r={r}",
                hint="lora_A and lora_B disagree on the rank; the file is corrupt, save it again.",
            )
        B = _kasa_scaled(files.source, path, cfg, mk, tensors, A=A, B=B)
        if "magnitude" in mk.keys and not cfg.use_dora:
            raise InvalidAdapterError(
                f"{files.source}: {path} has lora_magnitude_vector but use_dora is false"
            )
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
        if cfg.use_dora and modules[path].magnitude is None:
            raise InvalidAdapterError(
                f"{files.source}: {path}: use_dora is true but lora_magnitude_vector is missing"
            )
    replacements = {p: tensors[k] for p, k in layout.replacements.items()}
    tokens = {}
    for emb, key in layout.trainable_tokens.items():
        indices = _token_indices(cfg, emb)
        rows = tensors[key]
        if indices is None or len(indices) != rows.shape[0]:
            raise InvalidAdapterError(
                f"{files.source}: {emb}: {rows.shape[0]} trainable token rows but "
                f"trainable_token_indices gives {None if indices is None else len(indices)}"
            )
        tokens[emb] = (indices, rows)
    return LoadedAdapter(name, cfg, files, modules, replacements, tokens, experts)


def _kasa_scaled(
    source: str, path: str, cfg: LoraAdapterConfig, mk, tensors: dict, *, A: torch.Tensor, B: torch.Tensor
) -> torch.Tensor:
    """KaSA: ΔW = s·B·diag(d)·A (PEFT: lora_B(lora_A(x) * d)), so B·diag(d) is the B of a plain
    LoRA; exact up to float32 rounding. On the truncated base (core/lora/delta.kasa_truncated)."""
    keys = mk.keys
    if "kasa_diag" not in keys:  # PEFT's KaSA variant is for Linear layers only
        if cfg.kasa and A.dim() == 2 and not mk.embedding:
            raise InvalidAdapterError(
                f"{source}: {path}: kasa_config is set but lora_diag is missing",
                hint="Save the adapter again with PEFT.",
            )
        return B
    diag = tensors[keys["kasa_diag"]]
    if not cfg.kasa or diag.shape != (B.shape[1],) or B.dim() != 2:
        raise InvalidAdapterError(
            f"{source}: {path}: lora_diag {list(diag.shape)} needs kasa_config and r={B.shape[1]}"
        )
    return B * diag.to(B.dtype)


def _block_diagonal(
    source: str, path: str, block: tuple[str, int], A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-LoRA (core/adapter/variants.py): ``torch.block_diag`` of the n stored row blocks, as
    PEFT's ``BlockDiagonalLinear.weight_as_blockdiagonal_matrix``; exact (the zeros add nothing)."""
    role, n = block
    t = A if role == "A" else B
    if t.dim() != 2 or t.shape[0] % n:
        raise InvalidAdapterError(
            f"{source}: {path}: BD-LoRA lora_{role} {list(t.shape)} does not split into {n} blocks",
            hint="Check use_bdlora.nblocks.",
        )
    full = torch.block_diag(*t.chunk(n, dim=0))
    return (full, B) if role == "A" else (A, full)


def _token_indices(cfg: LoraAdapterConfig, emb_path: str) -> list[int] | None:
    tti = cfg.trainable_token_indices
    if isinstance(tti, list):
        return tti
    if isinstance(tti, dict):
        for key, idx in tti.items():
            if emb_path == key or emb_path.endswith("." + key):
                return idx
    return None
