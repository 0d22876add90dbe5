"""Extract a LoRA adapter from a fully fine-tuned model: truncated SVD of ΔW = W_ft − W_base per
weight matrix, streamed tensor by tensor (memory bounded by one matrix pair), randomised SVD for
large matrices (core/lora/svd.py). Changed tensors that are no weight matrix (norms, biases of
unadapted modules, embeddings with new rows) become ``modules_to_save`` or are skipped.

Scaling: r = --rank (or the most common rank), lora_alpha = r, ranks below as full-path
rank_pattern; each module's SVD is folded into its factors with its own s (as in rank_reduce).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.core.adapter.base_info import tied_embeddings
from adapterctl.core.adapter.compat import CONV1D_MODEL_TYPES
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.convert.draft import AdapterDraft, ModuleReport
from adapterctl.core.convert.rank_reduce import ranked_config
from adapterctl.core.lora.svd import (
    LowRankSVD,
    captured_energy,
    choose_rank,
    lora_factors,
    svd_of_matrix,
)
from adapterctl.errors import UsageError
from adapterctl.io.checkpoint.adapter_writer import lora_key, replacement_key
from adapterctl.io.checkpoint.reader import CheckpointReader
from adapterctl.io.folders.model_dir import locate_model_files


@dataclass
class _Scan:
    svds: dict[str, LowRankSVD] = field(default_factory=dict)
    embeddings: set[str] = field(default_factory=set)
    reports: list[ModuleReport] = field(default_factory=list)
    changed_other: dict[str, str] = field(default_factory=dict)  # param -> why not factored
    lora_biases: list[str] = field(default_factory=list)  # changed biases of factored modules
    candidates: set[str] = field(default_factory=set)  # every 2-D weight module of the model


def is_embedding(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return "embed" in leaf or leaf in ("wte", "wpe")


def extract_adapter(
    base_dir: str | Path,
    ft_dir: str | Path,
    rank: int | None,
    *,
    energy: float | None = None,
    skip_unfactorable: bool = False,
    base_name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AdapterDraft:
    if rank is None or rank < 1:
        raise UsageError(
            "--extract needs --rank R (R >= 1)", hint="--energy may lower the rank per module below R."
        )
    if energy is not None and not 0 < energy <= 1:
        raise UsageError(
            f"--energy must be in (0, 1], got {energy}",
            hint="e.g. --energy 0.9 keeps 90% of each ΔW's squared norm.",
        )
    base_files, ft_files = locate_model_files(base_dir), locate_model_files(ft_dir)
    with CheckpointReader(base_files) as base, CheckpointReader(ft_files) as ft:
        tied = tied_embeddings(ft_files.config)  # as transformers decides
        conv1d = (ft_files.model_type or "") in CONV1D_MODEL_TYPES
        scan = _scan(base, ft, rank, energy=energy, conv1d=conv1d, tied=tied, progress=progress)
        config, tensors = _assemble(
            scan,
            ft,
            rank=rank,
            conv1d=conv1d,
            skip=skip_unfactorable,
            model_config=ft_files.config,
            base_name=base_name or str(base_dir),
        )
    notes = tuple(
        f"{p}: changed but not factored ({why})"
        + (", skipped" if skip_unfactorable else ", saved in modules_to_save")
        for p, why in sorted(scan.changed_other.items())
    )
    return AdapterDraft(
        config, tensors, str(ft_dir), steps=("extract",), modules=tuple(scan.reports), notes=notes
    )


def _scan(
    base: CheckpointReader,
    ft: CheckpointReader,
    rank: int,
    *,
    energy: float | None,
    conv1d: bool,
    tied: bool,
    progress,
) -> _Scan:
    scan = _Scan()
    by_file = sorted(ft.names, key=lambda n: (str(ft.file_of(n)), n))  # shard by shard
    for i, name in enumerate(by_file):
        if progress:
            progress(name, i, len(by_file))
        module, _, leaf = name.rpartition(".")
        is_matrix = leaf == "weight" and len(ft.shape(name)) == 2
        if is_matrix:
            scan.candidates.add(module)
        key = base.resolve(name)
        if key is None or tuple(base.shape(key)) != tuple(ft.shape(name)):
            scan.changed_other[name] = "new tensor" if key is None else "shape changed"
            continue
        delta = ft.load(name).float() - base.load(key).float()  # ΔW in float32
        if not bool(delta.any()):
            continue
        if not is_matrix:
            scan.changed_other[name] = "not a weight matrix"
            continue
        emb = is_embedding(module)
        if emb and tied:
            scan.changed_other[name] = "tied input/output embedding"
            continue
        # LoRA layout is (out, in): Conv1D stores (in, out) and B_e A_e is the table transposed
        M = delta.T if (emb or conv1d) else delta
        svd = svd_of_matrix(M, rank)
        k = choose_rank(svd, rank)
        if energy is not None:  # --energy lowers the rank below --rank where it can
            k = min(k, choose_rank(svd, energy=energy))
        scan.svds[module] = svd.truncate(k)
        if emb:
            scan.embeddings.add(module)
        scan.reports.append(ModuleReport(module, min(M.shape), k, None, captured_energy(svd, k)))
        del delta, M
    for name in list(scan.changed_other):
        module, _, leaf = name.rpartition(".")
        if leaf == "bias" and module in scan.svds and scan.changed_other[name] == "not a weight matrix":
            scan.lora_biases.append(name)
            del scan.changed_other[name]
    return scan


def _targets(scan: _Scan) -> list[str]:
    """Per leaf name: the bare name when it picks exactly the factored modules with that name,
    else their full paths (PEFT matches list entries as dot-aligned suffixes, spec 1.6)."""
    out = []
    for leaf in sorted({m.rsplit(".", 1)[-1] for m in scan.svds}):
        done = {m for m in scan.svds if m.rsplit(".", 1)[-1] == leaf}
        same = {m for m in scan.candidates if m.rsplit(".", 1)[-1] == leaf}
        out += [leaf] if same == done else sorted(done)
    return out


def _assemble(
    scan: _Scan,
    ft: CheckpointReader,
    *,
    rank: int,
    conv1d: bool,
    skip: bool,
    model_config: dict,
    base_name: str,
) -> tuple[dict, dict]:
    if not scan.svds:
        raise UsageError(
            "the fine-tuned model has no changed weight matrix to factor",
            hint="Is FINETUNED really a fine-tune of BASE (and not the same model)?",
        )
    archs = model_config.get("architectures") or []
    doc = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if any(str(a).endswith("ForCausalLM") for a in archs) else None,
        "r": rank,
        "lora_alpha": rank,
        "target_modules": _targets(scan),
        "fan_in_fan_out": conv1d,
        "use_rslora": False,
        "use_dora": False,
        "bias": "lora_only" if scan.lora_biases else "none",
        "base_model_name_or_path": base_name,
        "init_lora_weights": True,
        "alpha_pattern": {},
    }
    doc = ranked_config(doc, {m: s.S.numel() for m, s in scan.svds.items()})
    doc["lora_alpha"] = doc["r"]
    from adapterctl.core.adapter.config import parse_adapter_config

    cfg = parse_adapter_config(doc)
    tensors = {}
    for module, svd in scan.svds.items():
        A, B = lora_factors(svd, module_scaling(cfg, module)[2])
        emb = module in scan.embeddings
        tensors[lora_key(module, "A", emb)], tensors[lora_key(module, "B", emb)] = A, B
    for name in scan.lora_biases:  # the base bias of a LoRA-wrapped module (spec 4.3)
        module = name.rpartition(".")[0]
        tensors[replacement_key(module + ".base_layer.bias")] = ft.load(name)
    mts = sorted({n.rpartition(".")[0] for n in scan.changed_other}) if not skip else []
    for module in mts:  # PEFT needs every parameter of a modules_to_save module
        for name in ft.names:
            if name.rpartition(".")[0] == module:
                tensors[replacement_key(name)] = ft.load(name)
    doc["modules_to_save"] = mts or None
    return doc, tensors
