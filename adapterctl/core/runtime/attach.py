"""The LoRA engine: attach PEFT adapters to a transformers model without PEFT (spec 1.6 to 5, 9.1).

Public API (also exported lazily from :mod:`adapterctl`)::

    report = attach_adapter(model, "./my-lora", name="a")      # active with weight 1.0
    attach_adapter(model, "./other", name="b")
    set_active(model, {"a": 1.0, "b": 0.5})                      # weighted sum of deltas
    with row_adapters(model, ["a", "b", "__base__"]):            # one adapter per batch row
        model(input_ids)
    fold(model); ...; unfold(model)                              # merged fast path, exact restore
    detach(model, "b")
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter.config import RANDOMISED_INITS, RECOMPUTABLE_INITS, is_safe_adapter_name
from adapterctl.core.adapter.variants import layer_map
from adapterctl.core.lora.delta import mutated_init
from adapterctl.core.lora.loaded import LoadedAdapter, load_adapter
from adapterctl.core.runtime.expert_wrapper import ExpertsWrapper, inject_experts, plan_experts
from adapterctl.core.runtime.fit import find_module, find_param, plan_fit, require_float_base, unwrap
from adapterctl.core.runtime.layers import (
    BASE_ROW,
    LoraSlot,
    LoraWrapper,
    execution_device,
    offloaded_weight,
)
from adapterctl.core.runtime.layout import map_to_model
from adapterctl.core.runtime.replicate import (
    Replication,
    replicate_layers,
    restore_layers,
)
from adapterctl.core.runtime.wrappers import SavedModuleWrapper, TokenRowsWrapper
from adapterctl.errors import UnsupportedError, UsageError

_STATE = "_adapterctl_adapters"
_WRAPPERS = (LoraWrapper, ExpertsWrapper, SavedModuleWrapper, TokenRowsWrapper)
#: how a report names each layer kind
LABELS = {
    C.LayerKind.LINEAR: "Linear",
    C.LayerKind.CONV1D_GPT2: "Conv1D",
    C.LayerKind.EMBEDDING: "Embedding",
    C.LayerKind.BNB4: "Linear4bit",
    C.LayerKind.BNB8: "Linear8bitLt",
}


@dataclass(frozen=True)
class AttachReport:
    """What one attach did: modules per kind, parameter count, devices, dtype, time."""

    name: str
    source: str
    modules: dict[str, int]
    parameters: int
    devices: list[str]
    dtype: str
    saved_modules: list[str]
    replaced_parameters: list[str]
    trainable_tokens: list[str]
    init_recomputed: str | None
    warnings: list[str]
    seconds: float
    #: how the adapter's module paths were rewritten to the model's layout (text <-> VLM,
    #: core/adapter/prefixes.py): {"from", "to", "rules"}; None when they fit as they are
    key_mapping: dict | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Record:
    report: AttachReport
    adapter: LoadedAdapter
    #: model parameter path -> original tensor, restored on detach (replacements, PiSSA residuals)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    replication: Replication | None = None  # layer_replication: the layer list before it


def _records(model: nn.Module) -> dict[str, _Record]:
    if _STATE not in model.__dict__:
        model.__dict__[_STATE] = {}
        model.__dict__["_adapterctl_active"] = {}
    return model.__dict__[_STATE]


def attached_adapters(model: nn.Module) -> dict[str, AttachReport]:
    """name -> AttachReport of every adapter attached to ``model``."""
    return {n: r.report for n, r in _records(model).items()}


def active_adapters(model: nn.Module) -> dict[str, float]:
    _records(model)
    return dict(model.__dict__["_adapterctl_active"])


def attach_adapter(
    model: nn.Module,
    adapter: str | Path | LoadedAdapter,
    name: str = "default",
    trainable: bool = False,
    weight: float = 1.0,
    activate: bool = True,
) -> AttachReport:
    """Attach a PEFT LoRA adapter (folder or :class:`LoadedAdapter`) to ``model`` under ``name``.

    The adapter is validated against the model before anything changes (:func:`plan_fit`). With
    ``activate`` it joins the active set with ``weight``. ``trainable`` leaves only adapter
    tensors requiring grad (continued training); otherwise nothing requires grad (PEFT inference).
    """
    start = time.perf_counter()
    records = _records(model)
    if not is_safe_adapter_name(name) or name == BASE_ROW:
        raise UsageError(
            f"adapter name {name!r} is not allowed", hint="Use letters, digits, '.', '_' and '-' only."
        )
    if name in records:
        raise UsageError(
            f"an adapter named {name!r} is already attached", hint="Pick another name, or detach it first."
        )
    if any(isinstance(m, LoraWrapper) and m.folded for m in model.modules()):
        raise UsageError("adapters are folded into the base weights", hint="Call unfold() first.")
    la = adapter if isinstance(adapter, LoadedAdapter) else load_adapter(adapter, name)
    la, mapping = map_to_model(model, la)
    replication = _replicate(model, la, records)
    try:
        plan = plan_fit(model, la, la.source)
        experts = plan_experts(model, la, find_module, unwrap)  # target_parameters
    except Exception:
        if replication is not None:
            restore_layers(replication, model)
        raise
    init = _mutating_init(la)
    if init:
        for path, (base, _) in plan.lora.items():
            require_float_base(path, base, str(la.config.init_lora_weights))
    record = _Record(report=None, adapter=la, replication=replication)  # type: ignore[arg-type]
    warnings = _warnings(la, records, plan.unmatched_targets, init)
    mismatch = base_mismatch(la.config.base_model_name_or_path, model)
    if mismatch:
        warnings.insert(0, mismatch)
    with torch.no_grad():
        if init:
            _recompute_residuals(model, la, plan, init, record)
        kinds, devices, params = _inject_lora(model, la, plan, name)
        params += inject_experts(model, experts, name, kinds, devices, _set_module)
        _apply_replacements(model, la, plan, name, record)
        _inject_tokens(model, la, plan, name)
    _set_grads(model, name, trainable)
    record.report = AttachReport(
        name=name,
        source=la.source,
        modules=dict(sorted(kinds.items())),
        parameters=params,
        devices=sorted(devices),
        dtype=_base_dtype(model),
        saved_modules=sorted(plan.saved_modules),
        replaced_parameters=sorted(plan.params),
        trainable_tokens=sorted(plan.tokens),
        init_recomputed=init,
        warnings=warnings,
        seconds=round(time.perf_counter() - start, 3),
        key_mapping=mapping.to_dict() if mapping else None,
    )
    records[name] = record
    if activate:
        set_active(model, {**active_adapters(model), name: weight})
    return record.report


def _replicate(model: nn.Module, la: LoadedAdapter, records: dict) -> Replication | None:
    """layer_replication rebuilds the model's layers for this adapter's keys (engine/replicate.py):
    it must be the only adapter, as the layers others were trained on are gone."""
    sources = layer_map(la.config.raw.get("layer_replication"))
    replicated = [n for n, r in records.items() if r.replication is not None]
    if (sources is not None and records) or replicated:
        raise UnsupportedError(
            f"{la.source}: layer_replication rebuilds the model's layer list, so an adapter that "
            f"uses it must be the only one attached (attached: {', '.join(records)})",
            hint="Attach it alone (or detach the others first).",
        )
    return replicate_layers(model, sources) if sources is not None else None


def _mutating_init(la: LoadedAdapter) -> str | None:
    if la.config.kasa:
        return "kasa"  # SVD-truncated Linear bases (core/lora/delta.kasa_truncated)
    kind = la.config.init_kind
    if kind in RANDOMISED_INITS:
        return "pissa"  # approximated by the full SVD (see _warnings)
    return kind if kind in RECOMPUTABLE_INITS else None


def _warnings(la: LoadedAdapter, records, unmatched, init) -> list[str]:
    out = []
    if unmatched:
        out.append(
            f"adapter_config targets {len(unmatched)} module(s) with no tensors in the file "
            f"(left without LoRA): {', '.join(unmatched[:5])}"
        )
    if init and records:
        out.append(
            f"{init} changes the base weights; combining it with other adapters changes "
            "their base too (as in PEFT)"
        )
    if la.config.init_kind in RANDOMISED_INITS:
        out.append(
            f"{la.config.init_lora_weights}: PEFT's randomized SVD is replaced by the full "
            "SVD, the residual it approximates"
        )
    return out


def base_mismatch(expected: str | None, model: nn.Module) -> str | None:
    """A warning when the adapter names another base than ``model``'s folder (which is a cache
    snapshot for a Hub base); the rule is compat.same_base."""
    actual = getattr(getattr(model, "config", None), "_name_or_path", None) or ""
    problem = C.base_name_problem(expected, actual)
    return problem.text if problem else None


def _recompute_residuals(model, la: LoadedAdapter, plan, init: str, record: _Record) -> None:
    """PiSSA / OLoRA / KaSA mutate the base at injection; PEFT recomputes that on load (spec 1.7).
    KaSA truncates Linear layers only (PEFT refuses Conv1D)."""
    for path, (base, kind) in plan.lora.items():
        if kind not in (C.LayerKind.LINEAR, C.LayerKind.CONV1D_GPT2) or (
            init == "kasa" and kind is not C.LayerKind.LINEAR
        ):
            continue  # PEFT's PiSSA/OLoRA initialisers mutate Linear/Conv1D weights only (KaSA: Linear)
        w = la.modules[path]
        _, _, residual = mutated_init(
            base.weight.data, w.r, w.scaling, init, fan_in_fan_out=kind.fan_in_fan_out
        )
        key = f"{path}.weight"
        record.originals.setdefault(key, base.weight.data.clone())
        base.weight.data.copy_(residual)


def _inject_lora(model, la: LoadedAdapter, plan, name: str):
    kinds, devices, params = Counter(), set(), 0
    dropout = float(la.config.raw.get("lora_dropout") or 0.0)
    for path, (base, kind) in plan.lora.items():
        wrapper = find_module(model, path)
        if not isinstance(wrapper, LoraWrapper):
            wrapper = LoraWrapper(base, kind)
            _set_module(model, path, wrapper)
        device = execution_device(base)
        slot = LoraSlot(la.modules[path], device, dropout)
        wrapper.lora[name] = slot
        wrapper.train(base.training)  # new modules start in train mode: follow the (eval) base
        label = LABELS.get(kind) or type(base).__name__  # conv: Conv1d, Conv2d or Conv3d
        kinds[label + ("+DoRA" if slot.magnitude is not None else "")] += 1
        devices.add(str(device))
        params += sum(p.numel() for p in slot.parameters())
    return kinds, devices, params


def _apply_replacements(model, la: LoadedAdapter, plan, name: str, record: _Record) -> None:
    """Full replacement tensors (spec 4.3): parameters overwritten in place (restored on detach);
    modules_to_save become per-adapter copies beside the original."""
    for ppath in plan.params:
        target = find_param(model, ppath)
        assert target is not None, "plan_fit refuses a replacement without its parameter"
        current = target
        if target.device.type == "meta":
            module_path, _, pname = ppath.rpartition(".")
            current = offloaded_weight(cast(nn.Module, unwrap(find_module(model, module_path))), pname)
        value = la.replacements[ppath].to(device=current.device, dtype=current.dtype)
        if torch.equal(current, value):
            continue  # saved but untouched (PEFT's save_embedding_layers="auto"): nothing to do
        if target.device.type == "meta":
            raise UnsupportedError(
                f"{ppath}: cannot replace a parameter of an offloaded layer",
                hint="Keep that layer in memory (adjust --device-map).",
            )
        record.originals.setdefault(ppath, target.data.clone())
        target.data.copy_(value)
    for module_path, members in plan.saved_modules.items():
        wrapper = find_module(model, module_path)
        if not isinstance(wrapper, SavedModuleWrapper):
            wrapper = SavedModuleWrapper(cast(nn.Module, wrapper))  # plan_fit found it
            _set_module(model, module_path, wrapper)
        wrapper.add_copy(name, {p: la.replacements[k] for p, k in members.items()})


def _inject_tokens(model, la: LoadedAdapter, plan, name: str) -> None:
    for emb_path, emb in plan.tokens.items():
        wrapper = find_module(model, emb_path)
        if not isinstance(wrapper, TokenRowsWrapper):
            wrapper = TokenRowsWrapper(cast(nn.Module, wrapper))  # plan_fit found it
            _set_module(model, emb_path, wrapper)
        indices, rows = la.trainable_tokens[emb_path]
        wrapper.add_rows(name, indices, rows)
        _tie_token_rows(model, emb, wrapper, name)


def _tie_token_rows(model, emb: nn.Module, emb_wrapper: TokenRowsWrapper, name: str) -> None:
    """A tied lm_head follows the embedding's replacement rows (PEFT's tied TrainableTokens)."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = cast("nn.Module | None", get_out()) if callable(get_out) else None  # transformers' lm_head
    if out is None or unwrap(out) is emb or getattr(unwrap(out), "weight", None) is not emb.weight:
        return
    path = next(p for p, m in model.named_modules() if m is out)
    if not isinstance(out, TokenRowsWrapper):
        if isinstance(out, _WRAPPERS):
            return
        out = TokenRowsWrapper(out)
        _set_module(model, path, out)
    out.token_rows[name] = emb_wrapper.token_rows[name]
    out.token_indices[name] = emb_wrapper.token_indices[name]


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def _set_grads(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze the base (PEFT does at injection); ``name``'s tensors train only with ``trainable``.
    Other adapters keep their own setting."""
    mine: list[nn.Parameter] = []
    others: set[int] = set()
    for mod in _wrappers(model):
        store = (
            mod.lora
            if isinstance(mod, (LoraWrapper, ExpertsWrapper))
            else (mod.copies if isinstance(mod, SavedModuleWrapper) else mod.token_rows)
        )
        for key, value in store.items():
            params = [value] if isinstance(value, nn.Parameter) else list(value.parameters())
            (mine.extend(params) if key == name else others.update(map(id, params)))
    for p in model.parameters():
        if id(p) not in others:
            p.requires_grad_(False)
    for p in mine:
        p.requires_grad_(trainable)


def _base_dtype(model: nn.Module) -> str:
    dtype = getattr(model, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "unknown"


def _wrappers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, _WRAPPERS)]


def set_active(model: nn.Module, names: str | list[str] | dict[str, float]) -> dict[str, float]:
    """Activate one adapter, several (each weight 1.0) or a weighted sum {name: weight}."""
    records = _records(model)
    if isinstance(names, str):
        names = [names]
    active = dict(names) if isinstance(names, dict) else {n: 1.0 for n in names}
    unknown = [n for n in active if n not in records]
    if unknown:
        raise UsageError(
            f"no adapter named {', '.join(map(repr, unknown))} is attached",
            hint=f"Attached: {', '.join(records) or 'none'}.",
        )
    if any(isinstance(m, LoraWrapper) and m.folded for m in model.modules()):
        raise UsageError("adapters are folded into the base weights", hint="Call unfold() first.")
    model.__dict__["_adapterctl_active"] = dict(active)
    for mod in _wrappers(model):
        mod.active = dict(active)
    return dict(active)


def detach(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``: wrappers lose its tensors (and go away when empty), replaced
    parameters and PiSSA/OLoRA residuals get their original values back."""
    records = _records(model)
    if name not in records:
        raise UsageError(
            f"no adapter named {name!r} is attached", hint=f"Attached: {', '.join(records) or 'none'}."
        )
    unfold(model)
    record = records.pop(name)
    for path, mod in list(model.named_modules()):
        if not isinstance(mod, _WRAPPERS):
            continue
        store = {
            LoraWrapper: "lora",
            ExpertsWrapper: "lora",
            SavedModuleWrapper: "copies",
            TokenRowsWrapper: "token_rows",
        }[type(mod)]
        container = getattr(mod, store)
        if name in container:
            del container[name]
            if isinstance(mod, TokenRowsWrapper):
                mod.token_indices.pop(name, None)
        if not len(container):
            _set_module(model, path, mod.base_layer)
    with torch.no_grad():
        for ppath, original in record.originals.items():
            param = find_param(model, ppath)
            assert param is not None, "a parameter replaced at attach is still there"
            param.data.copy_(original)
    if record.replication is not None:
        restore_layers(record.replication, model)
    active = {n: w for n, w in active_adapters(model).items() if n != name}
    set_active(model, active)


@contextmanager
def row_adapters(model: nn.Module, names: list[str]):
    """Mixed batch: row i of every forward inside uses adapter ``names[i]`` (``"__base__"``: none).

    Rows are grouped per adapter; each group's delta is computed on its rows only (spec 5)."""
    records = _records(model)
    unknown = sorted({n for n in names if n != BASE_ROW and n not in records})
    if unknown:
        raise UsageError(
            f"no adapter named {', '.join(map(repr, unknown))} is attached",
            hint=f"Attached: {', '.join(records) or 'none'}; '{BASE_ROW}' means none.",
        )
    if any(isinstance(m, LoraWrapper) and m.folded for m in model.modules()):
        raise UsageError("row_adapters cannot be used while adapters are folded", hint="Call unfold() first.")
    groups = {
        n: torch.tensor([i for i, x in enumerate(names) if x == n], dtype=torch.long)
        for n in dict.fromkeys(names)
        if n != BASE_ROW
    }
    wrappers = _wrappers(model)
    for mod in wrappers:
        mod.rows = groups
    try:
        yield
    finally:
        for mod in wrappers:
            mod.rows = None


def fold(model: nn.Module) -> int:
    """Merge the active adapters into the base weights (fast generation). Returns layers folded.

    A weight shared with another module (tied embeddings / lm_head) stays unmerged: folding it
    would apply the delta to the other module too, which PEFT's unmerged forward never does."""
    shared = _shared_parameters(model)
    count = 0
    for mod in model.modules():
        if isinstance(mod, LoraWrapper) and not mod.folded:
            if id(getattr(mod.base_layer, "weight", None)) in shared:
                continue
            mod.fold()
            count += int(mod.folded)
    return count


def _shared_parameters(model: nn.Module) -> set[int]:
    seen: Counter = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {pid for pid, n in seen.items() if n > 1}


def unfold(model: nn.Module) -> int:
    """Restore the exact original weights of every folded layer."""
    count = 0
    for mod in model.modules():
        if isinstance(mod, LoraWrapper) and mod.folded:
            mod.unfold()
            count += 1
    return count
