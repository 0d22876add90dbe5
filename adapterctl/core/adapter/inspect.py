"""``inspect``: what an adapter holds and whether it can be used, from its config and the
safetensors header alone (no torch). Spec sections 0 to 4.

Whether it can be used is core/adapter/validate.py's list (the loader raises from the same list);
with a base, compat.py's checks are added (the one "does it fit" rule)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter import expert_keys as X
from adapterctl.core.adapter import prefixes as PX
from adapterctl.core.adapter import problems as P
from adapterctl.core.adapter.config import LoraAdapterConfig, check_lora_type, parse_adapter_config
from adapterctl.core.adapter.keys import KeyLayout, ModuleKeys
from adapterctl.core.adapter.summary import (
    AdapterSummary,
    BaseCheck,
    ConfigSummary,
    ModuleSummary,
    WeightsSummary,
)
from adapterctl.core.adapter.targeting import matches_target, module_scaling
from adapterctl.core.adapter.validate import (
    TensorCheck,
    check_tensors,
    config_problems,
    problem_of,
    weights_problems,
)
from adapterctl.core.adapter.variants import base_module_path
from adapterctl.errors import AdapterctlError, IncompatibleBaseError
from adapterctl.io.folders.adapter_dir import AdapterFiles, locate_adapter_files
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.safetensors.header import SafetensorsHeader, read_safetensors_header


@dataclass
class _Base:
    """The base's parameter shapes (None for legacy .bin), as inspect reads them."""

    shown: str
    path: str
    shapes: dict[str, tuple] | None
    model_type: str | None
    problems: list[P.Problem]


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
    not_lora = _not_lora(doc, files)
    if not_lora:
        return AdapterSummary(
            files.source,
            str(files.root),
            _config_of_doc(doc),
            _weights(files, named=False),
            problems=[not_lora],
        )
    cfg = parse_adapter_config(doc, str(files.config))
    problems = weights_problems(files, headers_only="inspect") + config_problems(cfg)
    if files.weights is None or files.weights_format == "bin":
        return _summary(files, cfg, None, TensorCheck(), problems)
    header = read_safetensors_header(files.weights)
    seen = _read_base(base, base_source) if base is not None else None
    check = _check_tensors(cfg, header, files, seen)
    empty = [p for p in check.problems if p.code == "empty_adapter"]
    problems = (
        empty + problems + (seen.problems if seen else []) + [p for p in check.problems if p not in empty]
    )
    modules = _module_summaries(cfg, check, header, seen, check_values, problems)
    problems += _advisories(cfg, check.layout)
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
    summary = _summary(files, cfg, header, check, problems, modules)
    if seen is None:
        return summary
    return _with_base(summary, cfg, check.layout, header, seen)


def _not_lora(doc: dict, files: AdapterFiles) -> P.Problem | None:
    peft_type = doc.get("peft_type")
    if isinstance(peft_type, str) and peft_type.upper() == "LORA":
        return None
    try:
        check_lora_type(parse_adapter_config({"peft_type": peft_type}, files.source), files.source)
    except AdapterctlError as err:
        return problem_of(err)
    return None


def _read_base(base: str | Path, shown: str | None) -> _Base:
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_shapes

    files = locate_model_files(str(base))
    if files.weights_format != "safetensors":
        warn = P.warning("base_bin", f"{base}: legacy .bin weights: shapes not checked without loading them")
        return _Base(shown or str(base), str(base), None, files.model_type, [warn])
    return _Base(shown or str(base), str(base), read_model_shapes(files), files.model_type, [])


def _check_tensors(
    cfg: LoraAdapterConfig, header: SafetensorsHeader, files: AdapterFiles, seen: _Base | None
):
    shapes = {k: t.shape for k, t in header.tensors.items()}
    base_shapes = seen.shapes if seen else None
    exists = (
        (lambda m, p: X.locate_param(f"{m}.{p}", base_shapes) is not None or None) if base_shapes else None
    )
    dtypes = {k: t.dtype for k, t in header.tensors.items()}
    assert files.weights is not None  # the caller returns early without a weights file
    return check_tensors(cfg, shapes, dtypes, where=files.weights.name, exists=exists)


def _module_summaries(
    cfg: LoraAdapterConfig,
    check: TensorCheck,
    header: SafetensorsHeader,
    seen: _Base | None,
    check_values: bool,
    problems: list[P.Problem],
) -> list[ModuleSummary]:
    """One summary per target_parameters entry and per LoRA module; problems found on the way
    (expert shapes against the base) are appended to ``problems``."""
    shapes = seen.shapes if seen else None
    model_type = seen.model_type if seen else None
    modules = []
    for ek in check.experts.values():
        mod_summary, mod_problems = _expert_summary(ek, cfg, shapes, model_type, header, check_values)
        modules.append(mod_summary)
        problems += mod_problems
    spell = PX.spelling_for(_paths(check.layout), shapes) if shapes is not None else None  # text <-> VLM
    for name, mod in check.layout.modules.items():
        base_shape = (
            _lookup_base_shape(shapes, spell(base_module_path(cfg, name)))
            if shapes and spell is not None
            else None
        )
        modules.append(
            _module_summary(
                name,
                mod,
                cfg,
                base_shape=base_shape,
                model_type=model_type,
                header=header,
                check_values=check_values,
            )
        )
    return modules


def _module_summary(
    name: str,
    mod: ModuleKeys,
    cfg: LoraAdapterConfig,
    *,
    base_shape: tuple | None,
    model_type: str | None,
    header: SafetensorsHeader,
    check_values: bool,
) -> ModuleSummary:
    _, alpha, scaling = module_scaling(cfg, name)
    kind = C.base_layer_kind(
        mod.embedding, mod.shapes.get("A"), mod.shapes.get("B"), base_shape, model_type, cfg.fan_in_fan_out
    )
    return ModuleSummary(
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
        **(_values(header, mod, scaling) if check_values else {}),
    )


def _advisories(cfg: LoraAdapterConfig, layout: KeyLayout) -> list[P.Problem]:
    """Warnings: what PEFT would read otherwise than adapterctl, tensors of no known role."""
    out = []
    selective = cfg.target_modules is not None and not (
        isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == "all-linear"
    )
    for name in layout.modules if selective else ():
        if not matches_target(cfg, name):
            out.append(
                P.warning(
                    "untargeted_weights",
                    f"{name}: has LoRA weights but the config's target_modules do not select it",
                    "adapterctl applies it (the weights are authoritative); PEFT would silently ignore it.",
                )
            )
    extras = _classify_extras(layout, cfg)
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


# ----- against a base ----------------------------------------------------------------------------
def _with_base(
    summary: AdapterSummary, cfg: LoraAdapterConfig, layout: KeyLayout, header: SafetensorsHeader, seen: _Base
) -> AdapterSummary:
    problems = list(summary.problems)
    mapping = PX.base_mapping(_paths(layout), seen.shapes) if seen.shapes else None
    if seen.shapes:
        vision = mapping and PX.vision_problem(mapping, _paths(layout), seen.shown)
        problems += [vision] if vision else []
        spell = PX.spelling_for(_paths(layout), seen.shapes)
        adapter_shapes = {k: t.shape for k, t in header.tensors.items()}
        problems += _base_problems(seen, summary.modules, layout, adapter_shapes, cfg, spell)
    base = BaseCheck(
        seen.path,
        seen.model_type,
        compatible=not any(issubclass(p.error, IncompatibleBaseError) for p in problems),
        key_mapping=mapping.to_dict() if mapping else None,
    )
    return AdapterSummary(
        summary.source,
        summary.path,
        summary.config,
        summary.weights,
        summary.modules,
        summary.extras,
        base,
        problems,
    )


def _base_problems(
    seen: _Base,
    summary_mods: list[ModuleSummary],
    layout: KeyLayout,
    adapter_shapes: dict[str, tuple],
    cfg: LoraAdapterConfig,
    spell=lambda p: p,
) -> list[P.Problem]:
    from adapterctl.io.folders.model_dir import find_checkpoint_key

    shapes = seen.shapes or {}
    out = []
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
        base_key = find_checkpoint_key(spell(param) or param, set(shapes))
        problem = C.check_replacement(param, adapter_shapes[key], shapes[base_key] if base_key else None)
        if problem:
            out.append(problem)
    name_problem = C.base_name_problem(cfg.base_model_name_or_path, seen.shown)
    return out + ([name_problem] if name_problem else [])


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
    """One target_parameters entry: per-expert rank, the fused parameter it needs (spec 5.6).
    Its own consistency is validate.py's; here, the fit to the base's parameter."""
    r, alpha, scaling = module_scaling(cfg, ek.path)  # PEFT matches patterns on module.param
    consistent = not X.check_expert_keys(ek, r, cfg)
    problems = []
    a, b = ek.shapes.get("A"), ek.shapes.get("B")
    where = X.locate_param(ek.path, base_shapes) if base_shapes else None
    if base_shapes and consistent:
        problem = X.check_param_shape(
            ek, r, where.shape if where else None, model_type in X.TRANSPOSED_EXPERTS
        )
        problems += [problem] if problem else []
    values = (
        _values(header, ek, scaling, X.num_experts(a, r) if a else None)
        if (check_values and consistent and not problems)
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


def _lookup_base_shape(base_shapes: dict, name: str | None) -> tuple | None:
    from adapterctl.io.folders.model_dir import find_checkpoint_key

    key = find_checkpoint_key(name + ".weight", base_shapes) if name else None
    return base_shapes[key] if key else None


# ----- the summary -------------------------------------------------------------------------------
def _summary(
    files: AdapterFiles,
    cfg: LoraAdapterConfig,
    header: SafetensorsHeader | None,
    check: TensorCheck,
    problems: list[P.Problem],
    modules: list[ModuleSummary] | None = None,
) -> AdapterSummary:
    config = ConfigSummary(
        peft_type=cfg.peft_type,
        task_type=cfg.task_type,
        base_model=cfg.base_model_name_or_path,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        scaling=module_scaling(cfg, "")[2],
        use_rslora=cfg.use_rslora,
        variants=cfg.variants,
        init_lora_weights=cfg.init_lora_weights,
        target_modules=cfg.target_modules,
        exclude_modules=cfg.exclude_modules,
        modules_to_save=cfg.modules_to_save,
        bias=cfg.bias,
        peft_version=cfg.peft_version,
        target_parameters=X.target_parameters(cfg) or None,
    )
    extras = _classify_extras(check.layout, cfg)
    return AdapterSummary(
        files.source, str(files.root), config, _weights(files, header), modules or [], extras, None, problems
    )


def _weights(
    files: AdapterFiles, header: SafetensorsHeader | None = None, named: bool = True
) -> WeightsSummary:
    tensors = header.tensors if header else {}
    return WeightsSummary(
        weights_file=files.weights.name if files.weights and named else None,
        weights_format=files.weights_format,
        num_tensors=len(tensors),
        num_parameters=sum(t.numel for t in tensors.values()),
        size_bytes=(8 + header.header_size + header.total_bytes) if header else 0,
        dtypes=dict(sorted(Counter(t.dtype for t in tensors.values()).items())),
    )


def _config_of_doc(doc: dict) -> ConfigSummary:
    """Not a LoRA adapter: its peft_type only."""
    pt = doc.get("peft_type")
    return ConfigSummary(peft_type=pt if isinstance(pt, str) else None)
