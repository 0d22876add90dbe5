"""Is this adapter valid? One list of :class:`~adapterctl.core.adapter.problems.Problem`\\ s from
the config and the tensor names and shapes (a safetensors header, or the tensors themselves),
without torch (spec sections 1, 4 and 11).

``inspect`` renders the list; ``check`` (core/engine_rules/facts.py) and the loader
(core/lora/loaded.py) raise its first error (``Problem.as_error``), so what inspect calls usable
is what attach, merge and convert accept, and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter import problems as P
from adapterctl.core.adapter.config import (
    NEEDS_CONVERSION_INITS,
    RANDOMISED_INITS,
    RECOMPUTABLE_INITS,
    LoraAdapterConfig,
)
from adapterctl.core.adapter.keys import KeyLayout, ModuleKeys, split_keys
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.adapter.variants import bdlora_settings, block_diagonal_factor, expand_layout
from adapterctl.errors import AdapterctlError, NotFoundError, UnsupportedError
from adapterctl.io.folders.adapter_dir import AdapterFiles

_FILE_HINT = "The file is incomplete; save the adapter again."


def problem_of(err: AdapterctlError) -> P.Problem:
    """An error a parser raised, as a problem with its exit code."""
    return P.error(err.kind, err.message, err.hint, type(err))


# ----- the config ------------------------------------------------------------------------------
def config_problems(cfg: LoraAdapterConfig) -> list[P.Problem]:
    """Variants adapterctl does not implement, initialisers it cannot undo (spec 1.4, 1.7)."""
    out = [
        P.error(
            "unsupported_variant",
            f"adapter uses {key} ({name}), which adapterctl does not implement",
            "Applying it as plain LoRA would give wrong outputs; use PEFT for this adapter.",
            error=UnsupportedError,
        )
        for key, name in cfg.unsupported_variants.items()
    ]
    kind = cfg.init_kind
    if kind in RECOMPUTABLE_INITS | RANDOMISED_INITS:
        out.append(_mutating_init(cfg, kind))
    elif kind in NEEDS_CONVERSION_INITS:
        out.append(
            P.error(
                "needs_conversion",
                f"init_lora_weights={cfg.init_lora_weights!r} mutated the base model during training, "
                "and that change cannot be recomputed from the adapter",
                "Convert it to plain LoRA with PEFT's path_initial_model_for_weight_conversion "
                "(or `adapterctl convert --pissa-init INIT TRAINED OUT`), or use the residual base.",
                error=UnsupportedError,
            )
        )
    elif kind == "unknown":
        out.append(
            P.error(
                "unknown_init",
                f"unknown init_lora_weights value {cfg.init_lora_weights!r}",
                "Known values: true, false, gaussian, orthogonal, eva, mica, pissa, olora.",
                error=UnsupportedError,
            )
        )
    if cfg.use_rslora and (cfg.rank_pattern or cfg.alpha_pattern):
        out.append(
            P.warning(
                "rslora_patterns",
                "use_rslora with rank/alpha patterns: each module's scaling is its own alpha/sqrt(r)",
            )
        )
    return out


def _mutating_init(cfg: LoraAdapterConfig, kind: str) -> P.Problem:
    niter = (
        " (pissa_niter uses a randomised SVD that nobody can reproduce exactly: attach "
        "approximates it with the full SVD and warns; merge and convert --base refuse it)"
    )
    return P.warning(
        "mutating_init",
        f"init_lora_weights={cfg.init_lora_weights!r}: this adapter was trained on a residual base "
        "(W - s*B0@A0); attach and merge recompute that residual from the original base"
        + (niter if kind in RANDOMISED_INITS else ""),
        "Or convert it once to plain LoRA: adapterctl convert --base BASE ADAPTER OUT.",
    )


# ----- the files -------------------------------------------------------------------------------
def weights_problems(files: AdapterFiles, headers_only: str | None = None) -> list[P.Problem]:
    """A missing weights file; a legacy ``.bin`` when the caller (``headers_only``: its name, e.g.
    "inspect") reads safetensors headers only: a warning for inspect, which still reports the
    config, an error for the others."""
    if files.weights is None:
        return [
            P.error(
                "missing_weights",
                f"{files.source}: no adapter_model.safetensors (or adapter_model.bin)",
                "Copy or download the weights file too.",
                error=NotFoundError,
            )
        ]
    if files.weights_format == "bin" and headers_only:
        make = P.warning if headers_only == "inspect" else P.error
        args = () if headers_only == "inspect" else (UnsupportedError,)
        return [
            make(
                "legacy_bin",
                f"{files.source}: {files.weights.name} is a legacy pickle file; {headers_only} reads "
                "safetensors headers only",
                f"Convert it: adapterctl convert --to-safetensors {files.source} OUT "
                "(attach and merge read it safely with weights_only=True).",
                *args,
            )
        ]
    return []


# ----- the tensors -----------------------------------------------------------------------------
@dataclass
class TensorCheck:
    """The tensors grouped as the loader reads them, and what is wrong with them."""

    experts: dict[str, X.ExpertKeys] = field(default_factory=dict)
    layout: KeyLayout = field(default_factory=KeyLayout)
    problems: list[P.Problem] = field(default_factory=list)


def check_tensors(
    cfg: LoraAdapterConfig,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str] | None = None,
    where: str = "adapter_model.safetensors",
    exists=None,
) -> TensorCheck:
    """Every tensor placed and consistent with the config: target_parameters LoRA, module LoRA
    (pairs, ranks, DoRA, KaSA, BD-LoRA blocks), trainable-token rows, keys nobody can place.
    ``exists`` as in :func:`~adapterctl.core.adapter.expert_keys.split_expert_keys`."""
    out = TensorCheck()
    if not shapes:
        out.problems.append(
            P.error("empty_adapter", f"{where}: holds no tensors", "Save the adapter again after training.")
        )
        return out
    experts, rest, problems = X.split_expert_keys(shapes, cfg, dtypes, exists=exists)
    problems += [
        p for ek in experts.values() for p in X.check_expert_keys(ek, module_scaling(cfg, ek.path)[0], cfg)
    ]
    layout = split_keys(rest, dtypes)
    try:
        problems += _block_problems(layout, cfg)
        expand_layout(layout, cfg)  # BD-LoRA: the shapes the forward multiplies
    except AdapterctlError as err:
        problems.append(problem_of(err))
    for path, mod in layout.modules.items():
        problems += module_problems(mod, module_scaling(cfg, path)[0], cfg)
    problems += token_problems(layout, cfg, rest)
    problems += [
        P.error(
            "unknown_key",
            f"{key}: a LoRA-like key adapterctl cannot place",
            "Is this adapter from another tool or a newer PEFT version?",
        )
        for key in layout.unknown
    ]
    out.experts, out.layout, out.problems = experts, layout, problems
    return out


def _block_problems(layout: KeyLayout, cfg: LoraAdapterConfig) -> list[P.Problem]:
    """BD-LoRA: a stored block-diagonal factor is n row blocks, 2-D (variants.py)."""
    if bdlora_settings(cfg) is None:
        return []
    out = []
    for path, mod in layout.modules.items():
        found = block_diagonal_factor(cfg, path)
        if found is None:
            continue
        shape = mod.shapes.get(found[0])
        if shape is not None and (len(shape) != 2 or shape[0] % found[1]):
            out.append(
                P.error(
                    "bdlora_blocks",
                    f"{path}: BD-LoRA lora_{found[0]} {list(shape)} does not split into {found[1]} blocks",
                    "Check use_bdlora.nblocks.",
                )
            )
    return out


def module_problems(mod: ModuleKeys, r: int, cfg: LoraAdapterConfig) -> list[P.Problem]:
    """One module's LoRA: both factors, A (r, ...) and B (out, r, ...) for every layer kind
    (spec 4.1), DoRA's magnitude exactly when use_dora, KaSA's lora_diag exactly when
    kasa_config (on Linear layers: PEFT's KaSA variant is for Linear only)."""
    has_a, has_b = "A" in mod.keys, "B" in mod.keys
    if not (has_a and has_b):
        if has_a or has_b:
            role, other = ("A", "B") if has_a else ("B", "A")
            return [P.error("unpaired_lora", f"{mod.path}: has lora_{role} but no lora_{other}", _FILE_HINT)]
        return [
            P.error("orphan_tensor", f"{mod.path}: has {sorted(mod.keys)} but no lora_A/lora_B", _FILE_HINT)
        ]
    a, b = mod.shapes["A"], mod.shapes["B"]
    if len(a) < 2 or len(b) < 2:
        return [
            P.error(
                "bad_shape",
                f"{mod.path}: lora_A {list(a)} / lora_B {list(b)} must have at least 2 dimensions",
            )
        ]
    if a[0] != r:
        return [
            P.error(
                "rank_mismatch",
                f"{mod.path}: config gives r={r} but lora_A has shape {list(a)}",
                "Fix r or rank_pattern in adapter_config.json to match the tensors.",
            )
        ]
    if b[1] != r:
        return [
            P.error(
                "rank_mismatch",
                f"{mod.path}: lora_B has shape {list(b)} but r={r}",
                "lora_A and lora_B disagree on the rank; the file is corrupt, save it again.",
            )
        ]
    return _kasa_problems(mod, r, cfg) + _dora_problems(mod, cfg)


def _kasa_problems(mod: ModuleKeys, r: int, cfg: LoraAdapterConfig) -> list[P.Problem]:
    """KaSA: ΔW = s·B·diag(lora_diag)·A; lora_diag is (r,) beside a 2-D B (core/lora/loaded.py)."""
    diag = mod.shapes.get("kasa_diag")
    if diag is None:
        if cfg.kasa and len(mod.shapes["A"]) == 2 and not mod.embedding:
            return [
                P.error(
                    "kasa_missing_diag",
                    f"{mod.path}: kasa_config is set but lora_diag is missing",
                    "Save the adapter again with PEFT.",
                )
            ]
        return []
    if not cfg.kasa:
        return [
            P.error("kasa_mismatch", f"{mod.path}: has lora_diag (KaSA) but the config has no kasa_config")
        ]
    if tuple(diag) != (r,) or len(mod.shapes["B"]) != 2:
        return [P.error("kasa_mismatch", f"{mod.path}: lora_diag {list(diag)} needs kasa_config and r={r}")]
    return []


def _dora_problems(mod: ModuleKeys, cfg: LoraAdapterConfig) -> list[P.Problem]:
    has = "magnitude" in mod.keys
    if has and not cfg.use_dora:
        return [P.error("dora_mismatch", f"{mod.path}: has lora_magnitude_vector but use_dora is false")]
    if cfg.use_dora and not has:
        return [
            P.error(
                "dora_missing_magnitude",
                f"{mod.path}: use_dora is true but lora_magnitude_vector is missing",
                "Save the adapter again with PEFT (DoRA saves one magnitude vector per module).",
            )
        ]
    return []


def token_indices(cfg: LoraAdapterConfig, emb_path: str) -> list[int] | None:
    """The token ids ``trainable_token_indices`` gives the embedding ``emb_path`` (a list for
    every embedding, or a dict keyed by module name)."""
    tti = cfg.trainable_token_indices
    if isinstance(tti, list):
        return tti
    if isinstance(tti, dict):
        for key, idx in tti.items():
            if emb_path == key or emb_path.endswith("." + key):
                return idx
    return None


def token_problems(
    layout: KeyLayout, cfg: LoraAdapterConfig, shapes: dict[str, tuple[int, ...]]
) -> list[P.Problem]:
    """Each embedding's trainable-token rows: one per index ``trainable_token_indices`` gives it."""
    out = []
    for emb, key in layout.trainable_tokens.items():
        indices = token_indices(cfg, emb)
        rows = shapes[key][0] if shapes[key] else 0
        if indices is None:
            out.append(
                P.error(
                    "trainable_tokens_without_indices",
                    f"{emb}: trainable token rows are saved but trainable_token_indices gives none for it",
                    "Add the token ids to trainable_token_indices in adapter_config.json.",
                )
            )
        elif len(indices) != rows:
            out.append(
                P.error(
                    "trainable_tokens_mismatch",
                    f"{emb}: {rows} trainable token rows but trainable_token_indices gives {len(indices)}",
                    "The config and the file disagree; save the adapter again.",
                )
            )
    return out
