"""``inspect``: what an adapter holds and whether it can be used, from its config and the
safetensors header alone (no torch). Spec sections 0 to 4."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter import experts as X
from adapterctl.core.adapter import prefixes as PX
from adapterctl.core.adapter import problems as P
from adapterctl.core.adapter.config import LoraAdapterConfig, check_lora_type, parse_adapter_config
from adapterctl.core.adapter.keys import KeyLayout, ModuleKeys, split_keys
from adapterctl.core.adapter.targeting import matches_target, module_scaling
from adapterctl.core.adapter.variants import base_module_path, expand_layout
from adapterctl.errors import AdapterctlError
from adapterctl.io.folders.adapter_dir import AdapterFiles, locate_adapter_files
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.safetensors.header import SafetensorsHeader, read_safetensors_header


@dataclass(frozen=True)
class ModuleSummary:
    name: str
    kind: str  # a compat.LayerKind value: linear | conv1d-transposed | embedding | conv
    r: int | None
    alpha: float
    scaling: float
    a_shape: list[int] | None
    b_shape: list[int] | None
    dtype: str
    dora: bool = False
    lora_bias: bool = False
    base_shape: list[int] | None = None
    a_norm: float | None = None
    b_norm: float | None = None
    delta_norm: float | None = None
    nonfinite: int | None = None
    #: target_parameters on a 3-D parameter: the number of experts E (r is per expert; A holds
    #: r·E rows, B r·E columns; kind "experts"); None for a module LoRA and for a 2-D parameter
    #: (kind "parameter": A (r, in), B (out, r), as a Linear)
    experts: int | None = None


@dataclass(frozen=True)
class AdapterSummary:
    source: str
    path: str
    peft_type: str | None
    task_type: str | None
    base_model: str | None
    r: int | None
    lora_alpha: float | None
    scaling: float | None
    use_rslora: bool
    variants: list[str]
    init_lora_weights: bool | str | None
    target_modules: list[str] | str | None
    exclude_modules: list[str] | str | None
    modules_to_save: list[str] | None
    bias: str | None
    extras: dict[str, list[str]]
    peft_version: str | None
    weights_file: str | None
    weights_format: str | None
    modules: list[ModuleSummary]
    num_tensors: int
    num_parameters: int
    size_bytes: int
    dtypes: dict[str, int]
    base: dict | None
    problems: list[P.Problem] = field(default_factory=list)
    target_parameters: list[str] | None = None  # LoRA on raw parameters (MoE experts)

    @property
    def usable(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def exit_code(self) -> int:
        errs = [p.exit_code for p in self.problems if p.severity == "error"]
        return errs[0] if errs else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = [p.to_dict() for p in self.problems]
        d["usable"] = self.usable
        return d


def _module_kind(
    mod: ModuleKeys, cfg: LoraAdapterConfig, base_shape: tuple | None, model_type: str | None
) -> C.LayerKind:
    return C.base_layer_kind(
        mod.embedding, mod.shapes.get("A"), mod.shapes.get("B"), base_shape, model_type, cfg.fan_in_fan_out
    )


def _check_module(mod: ModuleKeys, r_cfg: int, cfg: LoraAdapterConfig) -> list[P.Problem]:
    out = []
    for role, other in (("A", "B"), ("B", "A")):
        if role in mod.keys and other not in mod.keys:
            out.append(
                P.error(
                    "unpaired_lora",
                    f"{mod.path}: has lora_{role} but no lora_{other}",
                    "The file is incomplete; save the adapter again.",
                )
            )
    if "A" not in mod.keys and "B" not in mod.keys:
        out.append(P.error("orphan_tensor", f"{mod.path}: has {sorted(mod.keys)} but no lora_A/lora_B"))
    a, b = mod.shapes.get("A"), mod.shapes.get("B")
    if a and b:
        if len(a) < 2 or len(b) < 2:
            out.append(
                P.error(
                    "bad_shape",
                    f"{mod.path}: lora_A {list(a)} / lora_B {list(b)} must have at least 2 dimensions",
                )
            )
        elif a[0] != r_cfg:
            out.append(
                P.error(
                    "rank_mismatch",
                    f"{mod.path}: config gives r={r_cfg} but lora_A has shape {list(a)}",
                    "Fix r or rank_pattern in adapter_config.json to match the tensors.",
                )
            )
        elif len(a) == 2 and b[1] != a[0]:
            out.append(
                P.error(
                    "rank_mismatch", f"{mod.path}: lora_A {list(a)} and lora_B {list(b)} disagree on the rank"
                )
            )
    if "kasa_diag" in mod.keys and not cfg.kasa:
        out.append(
            P.error("kasa_mismatch", f"{mod.path}: has lora_diag (KaSA) but the config has no kasa_config")
        )
    if "magnitude" in mod.keys and not cfg.use_dora:
        out.append(P.error("dora_mismatch", f"{mod.path}: has lora_magnitude_vector but use_dora is false"))
    return out


def _config_problems(cfg: LoraAdapterConfig) -> list[P.Problem]:
    out = [
        P.error(
            "unsupported_variant",
            f"adapter uses {key} ({name}), which adapterctl does not implement",
            "Use PEFT for this adapter.",
            exit_code=5,
        )
        for key, name in cfg.unsupported_variants.items()
    ]
    kind = cfg.init_kind
    if kind in ("pissa", "olora", "pissa_niter"):
        out.append(
            P.warning(
                "mutating_init",
                f"init_lora_weights={cfg.init_lora_weights!r}: this adapter was trained on a residual base "
                "(W - s*B0@A0); attach and merge recompute that residual from the original base"
                + (
                    " (pissa_niter uses a randomised SVD that nobody can reproduce exactly: attach "
                    "approximates it with the full SVD and warns; merge and convert --base refuse it)"
                    if kind == "pissa_niter"
                    else ""
                ),
                "Or convert it once to plain LoRA: adapterctl convert --base BASE ADAPTER OUT.",
            )
        )
    elif kind in ("corda", "loftq", "lora_ga"):
        out.append(
            P.error(
                "needs_conversion",
                f"init_lora_weights={cfg.init_lora_weights!r} mutated the base during training in a way "
                "that cannot be recomputed from the adapter",
                "Convert it with the initial adapter: adapterctl convert --pissa-init INIT ADAPTER OUT.",
                exit_code=5,
            )
        )
    elif kind == "unknown":
        out.append(
            P.error("unknown_init", f"unknown init_lora_weights {cfg.init_lora_weights!r}", exit_code=5)
        )
    if cfg.use_rslora and (cfg.rank_pattern or cfg.alpha_pattern):
        out.append(
            P.warning(
                "rslora_patterns",
                "use_rslora with rank/alpha patterns: each module's scaling is its own alpha/sqrt(r)",
            )
        )
    return out


def _classify_extras(layout: KeyLayout, cfg: LoraAdapterConfig) -> dict[str, list[str]]:
    extras: dict[str, list[str]] = {
        "modules_to_save": [],
        "biases": [],
        "embeddings": [],
        "other": [],
        "trainable_tokens": sorted(layout.trainable_tokens),
    }
    mts = cfg.modules_to_save or []
    for param in sorted(layout.replacements):
        module = param.rsplit(".", 1)[0]
        if any(module == m or module.endswith("." + m) for m in mts):
            extras["modules_to_save"].append(param)
        elif param.endswith(".bias"):
            extras["biases"].append(param)
        elif any(t in param for t in ("embed", "lm_head", "wte", "wpe", "word_embeddings")):
            extras["embeddings"].append(param)
        else:
            extras["other"].append(param)
    return extras


def _extras_problems(extras: dict[str, list[str]], cfg: LoraAdapterConfig) -> list[P.Problem]:
    out = []
    if extras["other"]:
        out.append(
            P.warning(
                "unmatched_full_tensors",
                f"{len(extras['other'])} full tensors are not LoRA weights, modules_to_save, biases or "
                f"embeddings: {', '.join(extras['other'][:5])}",
                "They replace the base parameters of the same name when the adapter is attached.",
            )
        )
    if extras["biases"] and cfg.bias == "none":
        out.append(P.warning("bias_mismatch", "the file holds base biases but bias is 'none'"))
    tti = cfg.trainable_token_indices
    if extras["trainable_tokens"] and not tti:
        out.append(
            P.error(
                "trainable_tokens_without_indices",
                "trainable token rows are saved but trainable_token_indices is missing from the config",
            )
        )
    return out


def _base_problems(
    base_name: str,
    summary_mods: list[ModuleSummary],
    layout: KeyLayout,
    adapter_shapes: dict[str, tuple],
    shapes_of_base: dict[str, tuple],
    cfg: LoraAdapterConfig,
    spell=lambda p: p,
) -> list[P.Problem]:
    from adapterctl.io.folders.model_dir import find_checkpoint_key

    out = []
    keys = set(shapes_of_base)
    summary_mods = [m for m in summary_mods if m.kind not in ("experts", "parameter")]  # checked
    # in _expert_summary
    for mod in summary_mods:
        if mod.base_shape is None:
            out.append(C.missing_module(mod.name, mod.a_shape, mod.b_shape))
    for mod in summary_mods:
        if mod.base_shape is None or mod.a_shape is None or mod.b_shape is None:
            continue
        problem = C.check_shapes(
            mod.name,
            C.LayerKind(mod.kind),
            mod.a_shape,
            mod.b_shape,
            mod.base_shape,
            layout.modules[mod.name].shapes.get("B_bias"),
        )
        if problem:
            out.append(problem)
    for param, key in sorted(layout.replacements.items()):
        base_key = find_checkpoint_key(spell(param) or param, keys)
        problem = C.check_replacement(
            param, adapter_shapes[key], shapes_of_base[base_key] if base_key else None
        )
        if problem:
            out.append(problem)
    name_problem = C.base_name_problem(cfg.base_model_name_or_path, base_name)
    return out + ([name_problem] if name_problem else [])


def _base_shapes(base: str) -> tuple[dict[str, tuple], str | None, list[P.Problem]]:
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_shapes

    files = locate_model_files(base)
    if files.weights_format != "safetensors":
        return (
            {},
            files.model_type,
            [P.warning("base_bin", f"{base}: legacy .bin weights: shapes not checked without loading them")],
        )
    return read_model_shapes(files), files.model_type, []


def _values(
    header: SafetensorsHeader, mod: ModuleKeys | X.ExpertKeys, scaling: float, experts: int | None = None
) -> dict:
    import numpy as np

    from adapterctl.io.safetensors.values import read_tensor_f32

    a = read_tensor_f32(header, mod.keys["A"]) if "A" in mod.keys else None
    b = read_tensor_f32(header, mod.keys["B"]) if "B" in mod.keys else None
    out: dict = {}
    bad = 0
    for key in mod.keys.values():
        t = read_tensor_f32(header, key)
        if t is not None:
            bad += int(t.size - np.isfinite(t).sum())
    out["nonfinite"] = bad
    if a is not None and b is not None:
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        out["a_norm"], out["b_norm"] = float(np.linalg.norm(a2)), float(np.linalg.norm(b2))
        if experts:  # ||ΔW||^2 = sum over experts of ||B_e A_e||^2 (spec 5.6 layouts)
            a3 = a2.reshape(experts, -1, a2.shape[1]).astype(np.float64)
            b3 = b2.reshape(b2.shape[0], -1, experts).transpose(2, 0, 1).astype(np.float64)
            g, h = a3 @ a3.transpose(0, 2, 1), b3.transpose(0, 2, 1) @ b3
            out["delta_norm"] = float(np.sqrt(max(float((g * h).sum()), 0.0)) * abs(scaling))
        elif b2.shape[1] == a2.shape[0]:
            # ||B A||_F^2 = sum((A A^T) * (B^T B)): an r x r computation, never the full delta.
            g = a2.astype(np.float64) @ a2.T.astype(np.float64)
            h = b2.T.astype(np.float64) @ b2.astype(np.float64)
            out["delta_norm"] = float(np.sqrt(max(float((g * h).sum()), 0.0)) * abs(scaling))
    return out


def inspect_adapter(
    path: str | Path,
    base: str | Path | None = None,
    check_values: bool = False,
    source: str | None = None,
    base_source: str | None = None,
) -> AdapterSummary:
    """Summarise the adapter folder ``path``; ``base`` is a local model folder to check against.

    ``source`` / ``base_source``: what the user typed (a Hub id resolves to a cache folder whose
    name is a commit sha, so names are compared against what was typed)."""
    files = locate_adapter_files(path, source)
    doc = read_json_object(files.config, "adapter_config.json")
    peft_type = doc.get("peft_type")
    if not (isinstance(peft_type, str) and peft_type.upper() == "LORA"):
        try:
            check_lora_type(parse_adapter_config({"peft_type": peft_type}, files.source), files.source)
        except AdapterctlError as err:
            return _empty_summary(files, doc, P.error(err.kind, err.message, err.hint, err.exit_code))
    cfg = parse_adapter_config(doc, str(files.config))
    problems = _config_problems(cfg)
    if files.weights is None:
        problems.insert(
            0,
            P.error(
                "missing_weights",
                f"{files.source}: no adapter_model.safetensors (or adapter_model.bin)",
                "Copy or download the weights file too.",
                exit_code=3,
            ),
        )
        return _summary(files, cfg, [], KeyLayout(), None, None, problems)
    if files.weights_format == "bin":
        problems.insert(
            0,
            P.warning(
                "legacy_bin",
                f"{files.weights.name}: legacy pickle weights; inspect reads safetensors only",
                f"Convert it: adapterctl convert --to-safetensors {files.source} OUT "
                "(attach and merge read it safely with weights_only=True).",
            ),
        )
        return _summary(files, cfg, [], KeyLayout(), None, None, problems)
    header = read_safetensors_header(files.weights)
    base_shapes, model_type, spell = None, None, None
    if base is not None:
        base_shapes, model_type, base_probs = _base_shapes(str(base))
        problems += base_probs
    experts, rest, expert_problems = X.split_expert_keys(
        {k: t.shape for k, t in header.tensors.items()},
        cfg,
        {k: t.dtype for k, t in header.tensors.items()},
        exists=(lambda m, p: X.locate_param(f"{m}.{p}", base_shapes) is not None or None)
        if base_shapes
        else None,
    )
    problems += expert_problems
    layout = split_keys(rest, {k: t.dtype for k, t in header.tensors.items()})
    expand_layout(layout, cfg)  # BD-LoRA: the shapes the forward multiplies
    if not header.tensors:
        problems.insert(
            0,
            P.error(
                "empty_adapter",
                f"{files.weights}: holds no tensors",
                "Save the adapter again after training.",
            ),
        )
    if base_shapes is not None:
        spell = PX.spelling_for(_paths(layout), base_shapes)  # text <-> VLM layouts
    modules = []
    for ek in experts.values():
        mod_summary, mod_problems = _expert_summary(ek, cfg, base_shapes, model_type, header, check_values)
        modules.append(mod_summary)
        problems += mod_problems
    for name, mod in layout.modules.items():
        r, alpha, scaling = module_scaling(cfg, name)
        problems += _check_module(mod, r, cfg)
        base_shape = (
            _lookup_base_shape(base_shapes, spell(base_module_path(cfg, name)), mod)
            if base_shapes and spell is not None
            else None
        )
        kind = _module_kind(mod, cfg, base_shape, model_type)
        values = _values(header, mod, scaling) if check_values else {}
        modules.append(
            ModuleSummary(
                name=name,
                kind=kind.value,
                r=mod.rank,
                alpha=alpha,
                scaling=scaling,
                a_shape=list(mod.shapes["A"]) if "A" in mod.shapes else None,
                b_shape=list(mod.shapes["B"]) if "B" in mod.shapes else None,
                dtype=mod.dtypes.get("A") or next(iter(mod.dtypes.values()), ""),
                dora="magnitude" in mod.keys,
                lora_bias="B_bias" in mod.keys,
                base_shape=list(base_shape) if base_shape is not None else None,
                **values,
            )
        )
        if (
            cfg.target_modules is not None
            and not (isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear")
            and not matches_target(cfg, name)
        ):
            problems.append(
                P.warning(
                    "untargeted_weights",
                    f"{name}: has LoRA weights but the config's target_modules do not select it",
                    "adapterctl applies it (the weights are authoritative); PEFT would silently ignore it.",
                )
            )
    for key in layout.unknown:
        problems.append(
            P.error(
                "unknown_key",
                f"{key}: a LoRA-like key adapterctl cannot place",
                "Is this adapter from another tool or a newer PEFT?",
            )
        )
    extras = _classify_extras(layout, cfg)
    problems += _extras_problems(extras, cfg)
    if check_values:
        problems += [
            P.error(
                "nonfinite",
                f"{m.name}: {m.nonfinite} NaN/Inf values",
                "Training diverged; use an earlier checkpoint.",
            )
            for m in modules
            if m.nonfinite
        ]
    base_info = None
    if base is not None:
        mapping = PX.base_mapping(_paths(layout), base_shapes) if base_shapes else None
        if base_shapes:
            vision = mapping and PX.vision_problem(mapping, _paths(layout), base_source or str(base))
            problems += [vision] if vision else []
            problems += _base_problems(
                base_source or str(base),
                modules,
                layout,
                {k: t.shape for k, t in header.tensors.items()},
                base_shapes,
                cfg,
                spell,
            )
        base_info = {
            "path": str(base),
            "model_type": model_type,
            "compatible": not any(p.exit_code == 6 for p in problems),
            "key_mapping": mapping.to_dict() if mapping else None,
        }
    return _summary(files, cfg, modules, layout, header, base_info, problems)


def _paths(layout: KeyLayout) -> list[str]:
    return [*layout.modules, *layout.replacements, *layout.trainable_tokens]


def _expert_summary(
    ek: X.ExpertKeys,
    cfg: LoraAdapterConfig,
    base_shapes: dict | None,
    model_type: str | None,
    header: SafetensorsHeader,
    check_values: bool,
) -> tuple[ModuleSummary, list[P.Problem]]:
    """One target_parameters entry: per-expert rank, the fused parameter it needs (spec 5.6)."""
    r, alpha, scaling = module_scaling(cfg, ek.path)  # PEFT matches patterns on module.param
    problems = X.check_expert_keys(ek, r, cfg)
    a, b = ek.shapes.get("A"), ek.shapes.get("B")
    where = X.locate_param(ek.path, base_shapes) if base_shapes else None
    if base_shapes and not problems:
        problem = X.check_param_shape(
            ek, r, where.shape if where else None, model_type in X.TRANSPOSED_EXPERTS
        )
        problems += [problem] if problem else []
    values = (
        _values(header, ek, scaling, X.num_experts(a, r) if a else None)
        if (check_values and not problems)
        else {}
    )
    e = X.num_experts(a, r) if a else None
    flat = len(where.shape) == 2 if where else e == 1  # a 2-D parameter (a router's weight)
    return ModuleSummary(
        name=ek.path,
        kind="parameter" if flat else "experts",
        r=r,
        alpha=alpha,
        scaling=scaling,
        a_shape=list(a) if a else None,
        b_shape=list(b) if b else None,
        dtype=ek.dtypes.get("A", ""),
        base_shape=list(where.shape) if where else None,
        experts=None if flat else e,
        **values,
    ), problems


def _lookup_base_shape(base_shapes: dict, name: str | None, mod: ModuleKeys) -> tuple | None:
    from adapterctl.io.folders.model_dir import find_checkpoint_key

    key = find_checkpoint_key(name + ".weight", base_shapes) if name else None
    return base_shapes[key] if key else None


def _summary(
    files: AdapterFiles,
    cfg: LoraAdapterConfig,
    modules: list[ModuleSummary],
    layout: KeyLayout,
    header: SafetensorsHeader | None,
    base_info: dict | None,
    problems: list[P.Problem],
) -> AdapterSummary:
    tensors = header.tensors if header else {}
    dtypes = Counter(t.dtype for t in tensors.values())
    default_scaling = module_scaling(cfg, "")[2]
    return AdapterSummary(
        source=files.source,
        path=str(files.root),
        peft_type=cfg.peft_type,
        task_type=cfg.task_type,
        base_model=cfg.base_model_name_or_path,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        scaling=default_scaling,
        use_rslora=cfg.use_rslora,
        variants=cfg.variants,
        init_lora_weights=cfg.init_lora_weights,
        target_modules=cfg.target_modules,
        exclude_modules=cfg.exclude_modules,
        modules_to_save=cfg.modules_to_save,
        bias=cfg.bias,
        extras=_classify_extras(layout, cfg),
        peft_version=cfg.peft_version,
        weights_file=files.weights.name if files.weights else None,
        weights_format=files.weights_format,
        modules=modules,
        num_tensors=len(tensors),
        num_parameters=sum(t.numel for t in tensors.values()),
        size_bytes=(8 + header.header_size + header.total_bytes) if header else 0,
        dtypes=dict(sorted(dtypes.items())),
        base=base_info,
        problems=problems,
        target_parameters=X.target_parameters(cfg) or None,
    )


def _empty_summary(files: AdapterFiles, doc: dict, problem: P.Problem) -> AdapterSummary:
    pt = doc.get("peft_type")
    return AdapterSummary(
        source=files.source,
        path=str(files.root),
        peft_type=pt if isinstance(pt, str) else None,
        task_type=None,
        base_model=None,
        r=None,
        lora_alpha=None,
        scaling=None,
        use_rslora=False,
        variants=[],
        init_lora_weights=None,
        target_modules=None,
        exclude_modules=None,
        modules_to_save=None,
        bias=None,
        extras={},
        peft_version=None,
        weights_file=None,
        weights_format=files.weights_format,
        modules=[],
        num_tensors=0,
        num_parameters=0,
        size_bytes=0,
        dtypes={},
        base=None,
        problems=[problem],
    )
