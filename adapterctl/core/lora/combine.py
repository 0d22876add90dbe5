"""Combining several adapters: full-delta combinations (task arithmetic, TIES, DARE, magnitude
pruning) and building one new LoRA adapter from several (spec section 8).

The combinations follow PEFT's ``peft.utils.merge_utils`` (the test oracle) applied to full deltas
ΔW_i, as mergekit does for task vectors: TIES (Yadav et al. 2023) prunes each ΔW_i to its top
``density`` fraction by magnitude, elects a sign per entry on the pruned, unweighted stack, and
averages the weighted entries that agree; DARE (Yu et al. 2024) drops entries at random with
probability 1-density and rescales by 1/density. Everything is float32.

``combine_adapters`` fixes PEFT's ``add_weighted_adapter`` pitfalls (#3761): each source's scaling
(rsLoRA included) is folded into the new tensors and the new adapter has scaling exactly 1
(``lora_alpha == r``, ``use_rslora`` false); lora_B biases are combined; DoRA, whose magnitudes
cannot be folded into plain LoRA factors, is refused instead of silently dropped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.adapter.keys import TRAINABLE_TOKENS_SUFFIX
from adapterctl.core.lora.loaded import LoadedAdapter, LoraWeights
from adapterctl.errors import IncompatibleBaseError, UnsupportedError, UsageError
from adapterctl.io.checkpoint.adapter_writer import lora_key, replacement_key

F32 = torch.float32
COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
ADAPTER_METHODS = ("cat", "svd") + COMBINATIONS[1:]


def check_combination(method: str, density: float | None, n_adapters: int) -> None:
    if method not in COMBINATIONS:
        raise UsageError(f"unknown combination {method!r}", hint=f"Use one of: {', '.join(COMBINATIONS)}.")
    if method != "linear" and density is None:
        raise UsageError(
            f"--combination {method} needs --density (the fraction of entries kept)",
            hint="For example --density 0.5.",
        )
    if density is not None and not 0 < density <= 1:
        raise UsageError(f"--density must be in (0, 1], got {density}")


def module_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator per tensor: DARE's masks do not depend on the order tensors are visited."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)


def _prune_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.view(t.shape)


def _prune_random(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    if density >= 1:
        return t
    # The mask is drawn on the CPU from the per-tensor generator, so CPU and CUDA runs agree.
    mask = torch.bernoulli(torch.full(t.shape, density, dtype=t.dtype), generator=generator)
    return t * mask.to(t.device) / density


def _disjoint(stack: torch.Tensor, weights: torch.Tensor, method: str = "total") -> torch.Tensor:
    """TIES sign election on the unweighted stack, then the mean of the agreeing weighted entries."""
    sign = stack.sign()
    votes = stack.sum(dim=0) if method == "total" else sign.sum(dim=0)
    agree = sign == torch.where(votes >= 0, 1.0, -1.0)
    weighted = stack * weights
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def combine_deltas(
    deltas: list[torch.Tensor],
    weights: list[float],
    method: str = "linear",
    density: float | None = None,
    generator: torch.Generator | None = None,
    majority_sign_method: str = "total",
) -> torch.Tensor:
    """One float32 tensor from full deltas of the same shape (see the module docstring)."""
    d = [x.to(F32) for x in deltas]
    if method in ("ties", "magnitude_prune"):
        d = [_prune_magnitude(x, density or 1.0) for x in d]
    elif method in ("dare_linear", "dare_ties"):
        d = [_prune_random(x, density or 1.0, generator) for x in d]
    stack = torch.stack(d, dim=0)
    w = torch.tensor(weights, dtype=F32, device=stack.device).view(-1, *([1] * (stack.dim() - 1)))
    if method in ("ties", "dare_ties"):
        return _disjoint(stack, w, majority_sign_method)
    return (stack * w).sum(dim=0)


# ----- a new adapter from several -------------------------------------------------------------
@dataclass(frozen=True)
class CombinedAdapter:
    config: dict
    tensors: dict[str, torch.Tensor]
    ranks: dict[str, int]


def _check_combinable(adapters: list[LoadedAdapter]) -> None:
    for ad in adapters:
        if ad.config.use_dora:
            raise UnsupportedError(
                f"{ad.source}: DoRA magnitudes cannot be folded into a plain LoRA adapter",
                hint="Merge the adapters into the base model instead (adapterctl merge BASE ...).",
            )
        if ad.config.raw.get("layer_replication"):
            raise UnsupportedError(
                f"{ad.source}: layer_replication adapters sit on replicated layers a plain LoRA "
                "adapter cannot describe",
                hint="Merge it into the base model instead.",
            )
        if ad.experts:  # their r·E factors and nested keys are not module LoRA (lora/expert_delta.py)
            raise UnsupportedError(
                f"{ad.source}: target_parameters (MoE expert) LoRA cannot be combined into a new adapter yet",
                hint="Merge it into the base model instead (adapterctl merge).",
            )
        if ad.config.kasa:
            raise UnsupportedError(
                f"{ad.source}: KaSA adapters act on an SVD-truncated base; a plain LoRA adapter "
                "cannot carry that",
                hint="Merge it into the base model instead (adapterctl merge).",
            )
        if ad.config.init_kind != "plain":
            raise UnsupportedError(
                f"{ad.source}: init_lora_weights={ad.config.init_lora_weights!r} adapters are "
                "relative to a mutated base; convert first",
                hint="adapterctl convert --base BASE ADAPTER OUT makes it a plain LoRA adapter.",
            )


def _factors(w: LoraWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B as 2-D float32 matrices in the LoRA layout: B @ A is (out, in) ((d, V) for
    embeddings, (Cout, Cin·k) for conv)."""
    return w.A.to(F32).flatten(1), w.B.to(F32).flatten(1)


def _new_factors(
    parts: list[tuple[float, LoraWeights]],
    method: str,
    rank: int | None,
    density: float | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    if method == "cat":  # exact: Σ w_i s_i B_i A_i = [B_1 ... B_n] [w_1 s_1 A_1; ...; w_n s_n A_n]
        A = torch.cat([_factors(w)[0] * (c * w.scaling) for c, w in parts], dim=0)
        B = torch.cat([_factors(w)[1] for _, w in parts], dim=1)
        return A, B
    deltas = [_factors(w)[1] @ _factors(w)[0] * w.scaling for _, w in parts]
    full = combine_deltas(
        deltas, [c for c, _ in parts], "linear" if method == "svd" else method, density, generator
    )
    k = min(rank or max(w.r for _, w in parts), *full.shape)
    U, S, Vh = torch.linalg.svd(full, full_matrices=False)  # best rank-k approximation (Eckart-Young)
    return Vh[:k].contiguous(), (U[:, :k] * S[:k]).contiguous()


def _shape_back(w: LoraWeights, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = A.shape[0]
    return A.reshape(r, *w.A.shape[1:]), B.reshape(w.B.shape[0], r, *w.B.shape[2:])


def _module_keys(path: str, kind: LayerKind) -> tuple[str, str, str]:
    emb = kind is LayerKind.EMBEDDING
    return lora_key(path, "A", emb), lora_key(path, "B", emb), lora_key(path, "B_bias")


def _merge_extras(adapters: list[LoadedAdapter]) -> tuple[dict[str, torch.Tensor], dict]:
    """Replacement tensors and trainable tokens: carried over; two adapters disagreeing refuse."""
    out: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    tti: dict = {}
    for ad in adapters:
        items = [(replacement_key(p), t) for p, t in ad.replacements.items()]
        for emb, (idx, rows) in ad.trainable_tokens.items():
            items.append((replacement_key(emb + TRAINABLE_TOKENS_SUFFIX), rows))
            tti[emb] = idx
        for key, t in items:
            if key in out and not torch.equal(out[key], t):
                raise UsageError(
                    f"{owner[key]} and {ad.source} both replace {key} with different values",
                    hint="Combine adapters whose saved modules do not overlap.",
                )
            out[key], owner[key] = t, ad.source
    return out, tti


def _patterns(ranks: dict[str, int], r: int) -> dict[str, int]:
    return {p: k for p, k in ranks.items() if k != r}


def combine_adapters(
    adapters: list[LoadedAdapter],
    weights: list[float],
    method: str = "cat",
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
) -> CombinedAdapter:
    """A new LoRA adapter whose ΔW is the chosen combination of the sources' ΔW (spec 8, fixed)."""
    if method not in ADAPTER_METHODS:
        raise UsageError(f"unknown method {method!r}", hint=f"Use one of: {', '.join(ADAPTER_METHODS)}.")
    if method not in ("cat", "svd"):
        check_combination(method, density, len(adapters))
    _check_combinable(adapters)
    paths = sorted({p for ad in adapters for p in ad.modules})
    tensors, ranks = {}, {}
    lora_bias = False
    for path in paths:
        parts = [(c, ad.modules[path]) for c, ad in zip(weights, adapters) if path in ad.modules]
        kinds = {w.kind for _, w in parts}
        if len(kinds) > 1 or len({(w.B.shape[0], *w.A.shape[1:]) for _, w in parts}) > 1:
            raise IncompatibleBaseError(
                f"{path}: the adapters disagree on the layer's kind or shape",
                hint="Combine adapters trained on the same base model.",
            )
        A, B = _shape_back(
            parts[0][1], *_new_factors(parts, method, rank, density, module_generator(seed, path))
        )
        key_a, key_b, key_bias = _module_keys(path, parts[0][1].kind)
        tensors[key_a], tensors[key_b] = A.contiguous(), B.contiguous()
        ranks[path] = A.shape[0]
        biases = [(c, w.scaling, w.bias) for c, w in parts if w.bias is not None]
        if biases:  # the bias sits inside the scaling (spec 6.2): fold s_i, new s is 1
            lora_bias = True
            tensors[key_bias] = sum(c * s * b.to(F32) for c, s, b in biases)
    if lora_bias:  # a module without a bias in a lora_bias adapter gets a zero one
        for path in paths:
            key_a, key_b, key_bias = _module_keys(path, LayerKind.LINEAR)
            if key_a in tensors and key_bias not in tensors:
                tensors[key_bias] = torch.zeros(tensors[key_b].shape[0])
    extras, tti = _merge_extras(adapters)
    tensors.update(extras)
    return CombinedAdapter(_new_config(adapters, ranks, paths, lora_bias, tti), tensors, ranks)


def _new_config(
    adapters: list[LoadedAdapter], ranks: dict[str, int], paths: list[str], lora_bias: bool, tti: dict
) -> dict:
    values = list(ranks.values()) or [adapters[0].config.r]
    r = max(set(values), key=values.count)  # the most common rank; the others in rank_pattern
    rank_pattern = _patterns(ranks, r)
    mts = sorted({m for ad in adapters for m in (ad.config.modules_to_save or [])})
    raw = dict(adapters[0].config.raw)
    # the new tensors are plain LoRA: no variant layout (BD-LoRA blocks, VeLoRA vectors), and
    # lm_head's LoRA is its own (ensure_weight_tying would re-tie it to the embedding's on load)
    for k in (
        "alora_invocation_tokens",
        "eva_config",
        "corda_config",
        "loftq_config",
        "layer_replication",
        "megatron_config",
        "megatron_core",
        "use_bdlora",
        "velora_config",
        "ensure_weight_tying",
    ):
        raw.pop(k, None)
    raw.update(
        {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": r,
            "use_rslora": False,
            "use_dora": False,
            "lora_bias": lora_bias,
            "init_lora_weights": True,
            "inference_mode": True,
            # full module paths: exactly the modules that have tensors, whatever each source targeted
            "target_modules": paths,
            "exclude_modules": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": rank_pattern,
            # scaling = alpha / r = 1 in every module (the sources' scalings are in the tensors)
            "alpha_pattern": {p: float(k) for p, k in rank_pattern.items()},
            "modules_to_save": mts or None,
            "trainable_token_indices": tti or None,
        }
    )
    return raw
