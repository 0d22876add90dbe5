"""``convert --for ENGINE``: the same adapter rewritten so that ENGINE serves it as trained, or a
clear refusal naming what no LoRA can hold there.

The engine's rules (core/engines) say what it does with the adapter; this step removes each
finding with the smallest exact change, in this order:

1. DoRA, where the engine does not serve it: the exact DoRA weight minus the base, as a
   truncated SVD (needs ``--base``; full_rank.dora_as_lora, error reported per module and for
   the whole adapter);
2. lora_B biases: no LoRA can hold a bias, so refused, or dropped with ``--drop-unsupported``;
3. full tensors (modules_to_save, saved embeddings, base biases) and trainable-token rows: a
   full-rank LoRA on the same module where the engine adapts it (exact, needs ``--base``),
   dropped exactly when equal to the base, else refused or dropped (relative change reported);
4. module kinds missing in some layers, for engines that skip such kinds: zero LoRA there;
5. ranks above what the engine accepts: truncated SVD to ``--rank``;
6. scales the engine computes differently (rsLoRA, rank/alpha patterns, one rank for all):
   baked into lora_B with one r and one alpha (zero-padding ranks is exact).

The result is checked with the same rules before it is written: every engine asked for must
give the verdict ``serves``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adapterctl.core.adapter.config import parse_adapter_config
from adapterctl.core.adapter.layer_kind import CONV1D_MODEL_TYPES
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.convert import full_rank as FR
from adapterctl.core.convert.draft import (
    AdapterDraft,
    ModuleReport,
    module_keys,
    view_adapter,
)
from adapterctl.core.convert.rank_reduce import ranked_config
from adapterctl.core.engines.check import ENGINES, engine_names
from adapterctl.core.engines.facts import (
    BaseFacts,
    facts_from_parts,
    is_embedding_name,
    is_lm_head_name,
    read_base_facts,
)
from adapterctl.core.engines.rules import Caps, evaluate
from adapterctl.errors import AdapterctlError, UnsupportedError, UsageError

PREFIX = "base_model.model."
#: rules whose findings mean "bake the scales into lora_B with one r and one alpha"
SCALE_RULES = ("scaling", "rank_pattern", "stacked_ranks", "one_rank", "one_scale")


@dataclass(frozen=True)
class ForEngine:
    engines: tuple[str, ...]
    base: str | None = None  # local folder
    base_name: str | None = None
    rank: int | None = None
    energy: float | None = None
    drop_unsupported: bool = False


def combined_caps(names: list[str]) -> Caps:
    """What every engine in ``names`` serves (the strictest of each)."""
    caps = [ENGINES[n].caps for n in names]
    ranks = [c.max_rank for c in caps if c.max_rank]
    bools = {f: all(getattr(c, f) for c in caps) for f in (
        "rslora", "alpha_pattern", "rank_pattern", "dora", "lora_bias", "embedding_lora",
        "lm_head_lora")}
    lists = [set(c.lora_modules) for c in caps if c.lora_modules is not None]
    return Caps(**bools, all_layers=any(c.all_layers for c in caps),
                list_targets=any(c.list_targets for c in caps),
                max_rank=min(ranks) if ranks else None,
                lora_modules=tuple(sorted(set.intersection(*lists))) if lists else None)


class _Work:
    """The adapter while it is being rewritten: factors per module, config, dropped keys."""

    def __init__(self, draft: AdapterDraft, req: ForEngine):
        self.draft, self.req = draft, req
        self.view = view_adapter(draft)
        self.keys = module_keys(draft)
        self.mods: dict[str, FR.Factors] = {p: FR.from_lora(w) for p, w in self.view.modules.items()}
        self.config = dict(draft.config)
        self.drop: set[str] = set()  # checkpoint keys not written
        self.removed: list[str] = []
        self.notes: list[str] = []
        self.reports: list[ModuleReport] = []
        self._reader = None
        self.base_facts: BaseFacts | None = (
            read_base_facts(req.base, req.base_name) if req.base else None)

    @property
    def conv1d(self) -> bool:
        return bool(self.base_facts and self.base_facts.model_type in CONV1D_MODEL_TYPES)

    def base_param(self, param: str, why: str) -> torch.Tensor:
        if self.req.base is None:
            raise UsageError(f"{self.draft.source}: {why} needs the base weights",
                             hint="Add --base BASE (the model the adapter was trained on).")
        if self._reader is None:
            from adapterctl.io.checkpoint import CheckpointReader
            from adapterctl.io.model_dir import locate_model_files

            self._reader = CheckpointReader(locate_model_files(self.req.base, self.req.base_name))
        return self._reader.load_param(param, self.draft.source)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def convert_for_engine(draft: AdapterDraft, req: ForEngine) -> AdapterDraft:
    names = engine_names(list(req.engines))
    caps = combined_caps(names)
    work = _Work(draft, req)
    try:
        _refuse_unfixable(work, names)
        if work.view.config.use_dora and not caps.dora:
            _dora_to_lora(work)
        _lora_biases(work, caps)
        _full_tensors(work, caps)
        _trainable_tokens(work, caps)
        _unservable_modules(work, caps)
        if caps.all_layers:
            _fill_layers(work)
        _cap_ranks(work, caps)
        return _finish(work, names, caps)
    finally:
        work.close()


# ----- refusals up front ---------------------------------------------------------------------
def _refuse_unfixable(work: _Work, names: list[str]) -> None:
    from adapterctl.core.engines.rules import resized_tables

    facts = _facts(work.draft.config, work.draft.tensors, work)
    resized = resized_tables(facts)
    if resized:
        raise UnsupportedError(f"{work.draft.source}: {resized[0]}: the adapter was trained with "
                               "a resized vocabulary, which no LoRA can add",
                               hint="Serve the resized base model (merge the adapter into it: "
                               "adapterctl merge).")
    for name in names:
        _, findings = evaluate(ENGINES[name], facts)
        for f in findings:
            if f.verdict in ("changes", "refuses") and f.fix is None:
                raise UnsupportedError(f"{work.draft.source}: convert cannot make {name} serve "
                                       f"this adapter as trained: {f.message}",
                                       hint=f"({f.source.cite()})")


def _facts(config: dict, tensors: dict, work: _Work):
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    return facts_from_parts(config, shapes, work.draft.source, base=work.base_facts)


# ----- the steps -------------------------------------------------------------------------------
def _dora_to_lora(work: _Work) -> None:
    reps = []
    for path, w in work.view.modules.items():
        if w.magnitude is None:
            continue
        W = work.base_param(path + ".weight", "DoRA -> LoRA (the DoRA weight minus the base)")
        f, rep = FR.dora_as_lora(w, W, work.conv1d and w.kind == "linear", work.req.rank,
                                 work.req.energy)
        work.mods[path] = f
        work.drop.add(work.keys[path].keys["magnitude"])
        work.reports.append(ModuleReport(path, rep.r_before, rep.r_after, rep.rel_error, rep.energy))
        reps.append(rep)
    work.config["use_dora"] = False
    err = FR.whole_error(reps)
    work.notes.append(f"DoRA -> LoRA: {len(reps)} modules, whole-adapter relative error "
                      f"{err:.3e} (||ΔW_dora - ΔW_lora||_F / ||ΔW_dora||_F over all modules); "
                      + ("raise --rank (or --energy) for less" if err > 1e-5 else "exact to float32"))


def _lora_biases(work: _Work, caps: Caps) -> None:
    with_bias = [p for p, w in work.view.modules.items() if w.bias is not None]
    if not with_bias or caps.lora_bias:
        return
    if not work.req.drop_unsupported:
        raise UnsupportedError(
            f"{work.draft.source}: lora_B biases on {len(with_bias)} modules ({with_bias[0]}, ...):"
            " no LoRA can hold a bias, and the engine does not serve lora_bias",
            hint="--drop-unsupported drops them and reports what that changes.")
    for path in with_bias:
        w = work.view.modules[path]
        sb = w.bias.float() * w.scaling
        work.drop.add(work.keys[path].keys["B_bias"])
        work.removed.append(f"{path}.lora_B.bias (lora_bias): output offset of norm "
                            f"{float(sb.norm()):.4g}" + _relative(work, path + ".bias", sb, add=True))
    work.config["lora_bias"] = False


def _relative(work: _Work, param: str, change: torch.Tensor, add: bool = False) -> str:
    """', relative change 0.03 of the trained value' when the base is known."""
    if work.req.base is None:
        return " (give --base to measure it against the base)"
    try:
        base = work.base_param(param, "").float()
    except AdapterctlError:
        return ", relative change 1 (the base has no such parameter)"
    trained = base + change if add else change
    delta = change if add else change - base
    denom = float(trained.norm())
    return f", relative change {float(delta.norm()) / denom if denom else 0.0:.4g} of the trained value"


def _full_tensors(work: _Work, caps: Caps) -> None:
    from adapterctl.core.engines.rules import tensor_fix

    facts = _facts(work.draft.config, work.draft.tensors, work)
    for t in facts.full_tensors:
        saved = work.draft.tensors[t.key]
        if t.role == "frozen_copy" and _frozen_copy_is_base(work, t, saved):
            work.drop.add(t.key)
            work.notes.append(f"{t.key}: PEFT's saved copy of the frozen base layer "
                              "(save_embedding_layers), equal to the base's; not written")
            continue
        if work.req.base is not None and _equals_base(work, t.param, saved):
            work.drop.add(t.key)
            work.notes.append(f"{t.key} ({t.role}) equals the base's {t.param}: dropped exactly")
        elif tensor_fix(t, caps) == "base":
            W = work.base_param(t.param, f"{t.param} ({t.role}) as a full-rank LoRA")
            kind = "embedding" if is_embedding_name(t.module) else "linear"
            delta = FR.lora_layout(saved.float() - W.float(), kind, work.conv1d)
            _add(work, t.module, FR.full_rank(delta, kind, torch.float32))
            work.drop.add(t.key)
            work.notes.append(f"{t.param} ({t.role}) -> LoRA on {t.module} of rank "
                              f"{min(delta.shape)} (exact)")
        else:
            _drop_or_refuse(work, t.key, t.param, f"{t.role}", saved)
    for field, empty in (("modules_to_save", None), ("bias", "none")):
        value = work.config.get(field)
        if value and value != empty:
            work.removed.append(f"config {field}={value!r}")
            work.config[field] = empty


def _frozen_copy_is_base(work: _Work, t, saved: torch.Tensor) -> bool:
    if work.req.base is None:
        return True  # PEFT saves the frozen layer as it is; nothing trained it
    return _equals_base(work, t.param, saved)


def _equals_base(work: _Work, param: str, saved: torch.Tensor) -> bool:
    try:
        W = work.base_param(param, "")
    except AdapterctlError:
        return False
    return tuple(W.shape) == tuple(saved.shape) and torch.equal(W.to(saved.dtype), saved)


def _drop_or_refuse(work: _Work, key: str, param: str, what: str, saved: torch.Tensor) -> None:
    if not work.req.drop_unsupported:
        raise UnsupportedError(
            f"{work.draft.source}: {param} ({what}) cannot be held by a LoRA the engine serves",
            hint="--drop-unsupported drops it and reports what that changes.")
    work.drop.add(key)
    work.removed.append(f"{param} ({what}, full weight replacement): norm "
                        f"{float(saved.float().norm()):.4g}" + _relative(work, param, saved.float()))


def _trainable_tokens(work: _Work, caps: Caps) -> None:
    tokens = work.view.trainable_tokens
    if not tokens:
        return
    for emb, (indices, rows) in tokens.items():
        key = next(k for k in work.draft.tensors if k.endswith(emb + ".token_adapter."
                                                               "trainable_tokens_delta"))
        if not caps.embedding_lora:
            _drop_or_refuse(work, key, emb + ".weight", "trainable token rows", rows)
            continue
        W = work.base_param(emb + ".weight", "trainable tokens as an embedding LoRA")
        f_emb, f_head = FR.token_rows(indices, rows, W, torch.float32)
        _add(work, emb, f_emb)
        head = _tied_head(work)
        if head is not None:
            _add(work, head, f_head)
        work.drop.add(key)
        work.notes.append(f"{emb}: {len(indices)} trainable token rows -> embedding LoRA of rank "
                          f"{len(indices)} (exact)" + (f", and on the tied {head}" if head else ""))
    work.config["trainable_token_indices"] = None


def _tied_head(work: _Work) -> str | None:
    bf = work.base_facts
    if bf is None or not bf.tie_word_embeddings or not bf.params:
        return None
    heads = [p[: -len(".weight")] for p in bf.params if p.endswith(".weight")
             and is_lm_head_name(p[: -len(".weight")])]
    return heads[0] if heads else "lm_head"


def _unservable_modules(work: _Work, caps: Caps) -> None:
    """LoRA modules the engine never adapts (an embedding, lm_head, a module outside its list)."""
    def served(path: str, f: FR.Factors) -> bool:
        if f.kind == "embedding":
            return caps.embedding_lora
        if is_lm_head_name(path) and not caps.lm_head_lora:
            return False
        return caps.lora_modules is None or path.rsplit(".", 1)[-1] in caps.lora_modules

    for path, f in list(work.mods.items()):
        if served(path, f):
            continue
        if not work.req.drop_unsupported:
            raise UnsupportedError(f"{work.draft.source}: {path}: the engine does not adapt this "
                                   "module with LoRA", hint="--drop-unsupported drops it and "
                                   "reports what that changes.")
        from adapterctl.core.lora.svd import svd_of_product

        norm = math.sqrt(svd_of_product(f.Bs.flatten(1), f.A.flatten(1)).total_energy)
        del work.mods[path]
        mk = work.keys.get(path)
        work.drop.update(mk.keys.values() if mk else ())
        layout = FR.lora_layout if f.kind != "embedding" else None
        rel = ""
        if work.req.base is not None and layout is not None:
            W = work.base_param(path + ".weight", "")
            rel = f", relative to the base weight {norm / float(W.float().norm()):.4g}"
        work.removed.append(f"{path} (LoRA the engine does not apply): ||ΔW||_F {norm:.4g}{rel}")


def _add(work: _Work, path: str, f: FR.Factors) -> None:
    have = work.mods.get(path)
    work.mods[path] = FR.concat(have, f) if have is not None else f


def _fill_layers(work: _Work) -> None:
    from adapterctl.core.engines.facts import layer_of
    from adapterctl.core.engines.rules import partial_kinds

    config = _target_config(work)
    facts = _facts(config, _tensors(work, config), work)
    for name, missing in partial_kinds(facts).items():
        sibling = next(p for p in work.mods if p.rsplit(".", 1)[-1] == name
                       and layer_of(p) is not None)
        idx = layer_of(sibling)
        for i in missing:
            path = sibling.replace(f".{idx}.", f".{i}.", 1)
            work.mods[path] = FR.zeros_like_module(work.mods[sibling])
        work.notes.append(f"{name}: zero LoRA added in layers {missing[:8]}"
                          f"{' ...' if len(missing) > 8 else ''} (the engine skips a module kind "
                          "that some layer lacks; zeros are exact)")


def _cap_ranks(work: _Work, caps: Caps) -> None:
    if caps.max_rank is None:
        return
    big = [p for p, f in work.mods.items() if f.r > caps.max_rank]
    if not big:
        return
    if work.req.rank is None or work.req.rank > caps.max_rank:
        raise UsageError(f"{work.draft.source}: {big[0]} has rank {work.mods[big[0]].r}, above "
                         f"the {caps.max_rank} the engine accepts",
                         hint=f"Add --rank {caps.max_rank} (truncated SVD, error reported).")
    from adapterctl.core.lora.svd import lora_factors, relative_error, svd_of_product

    for p in big:
        f = work.mods[p]
        svd = svd_of_product(f.Bs.flatten(1), f.A.flatten(1))
        k = min(work.req.rank, int(svd.S.numel()))
        A, Bs = lora_factors(svd.truncate(k), 1.0)
        work.mods[p] = replace(f, A=A, Bs=Bs, original=None)
        work.reports.append(ModuleReport(p, f.r, k, relative_error(svd, k)))


# ----- the output config and tensors -----------------------------------------------------------
def _target_config(work: _Work, bake: bool = False, uniform: bool = False) -> dict:
    """The output config: targets naming exactly the modules written; ranks as r plus full-path
    rank_pattern; with ``bake``, no rsLoRA and no alpha_pattern, lora_alpha = r (one scale)."""
    ranks = {p: f.r for p, f in work.mods.items()}
    if uniform:
        top = max(ranks.values())
        ranks = dict.fromkeys(ranks, top)
    doc = ranked_config(work.config, ranks)
    tm = doc.get("target_modules")
    if set(work.mods) != set(work.view.modules) or (
            isinstance(tm, str) and tm.lower() != "all-linear"):
        doc["target_modules"] = sorted(work.mods)
        doc["layers_to_transform"] = None
        doc["layers_pattern"] = None
    if bake:
        doc.update(use_rslora=False, alpha_pattern={}, lora_alpha=doc["r"])
    return doc


def _tensors(work: _Work, config: dict) -> dict[str, torch.Tensor]:
    cfg = parse_adapter_config(config, work.draft.source)
    out = {k: v for k, v in work.draft.tensors.items() if k not in work.drop}
    for path, f in work.mods.items():
        r = int(config["rank_pattern"].get(path, config["r"]))
        f = f.padded(r)
        _, _, s = module_scaling(cfg, path)
        keys = _module_keys(work, path, f.kind)
        if f.original is not None and math.isclose(s, f.original[2], rel_tol=0, abs_tol=0):
            A, B = f.original[0], f.original[1]
        else:  # float32 factors, one rounding to the written dtype
            A, B = f.A.to(f.dtype), (f.Bs / s).to(f.dtype)
        out[keys[0]], out[keys[1]] = A.contiguous(), B.contiguous()
    return out


def _module_keys(work: _Work, path: str, kind: str) -> tuple[str, str]:
    mk = work.keys.get(path)
    if mk is not None:
        return mk.keys["A"], mk.keys["B"]
    if kind == "embedding":
        return f"{PREFIX}{path}.lora_embedding_A", f"{PREFIX}{path}.lora_embedding_B"
    return f"{PREFIX}{path}.lora_A.weight", f"{PREFIX}{path}.lora_B.weight"


def _finish(work: _Work, names: list[str], caps: Caps) -> AdapterDraft:
    config = _target_config(work, uniform=not caps.rank_pattern)
    if not caps.rank_pattern and len({f.r for f in work.mods.values()}) > 1:
        work.notes.append(f"ranks zero-padded to one r={config['r']} (the engine takes one rank "
                          "for every module; zero rows and columns are exact)")
    if _needs_bake(work, config, names):
        config = _target_config(work, bake=True, uniform=not caps.rank_pattern)
        work.notes.append("scales baked into lora_B (use_rslora=false, no alpha_pattern, "
                          f"lora_alpha=r={config['r']}): the engine computes one scale per module "
                          "from r and lora_alpha")
    tensors = _tensors(work, config)
    flags = _verify(work, config, tensors, names)
    if flags:
        work.notes.append("serve with " + " ".join(flags))
    steps = work.draft.steps + (f"for-{'+'.join(names)}",)
    return replace(work.draft, config=config, tensors=tensors, steps=steps,
                   notes=work.draft.notes + tuple(work.notes),
                   removed=work.draft.removed + tuple(work.removed),
                   modules=work.draft.modules + tuple(work.reports))


def _needs_bake(work: _Work, config: dict, names: list[str]) -> bool:
    facts = _facts(config, _tensors(work, config), work)
    for name in names:
        _, findings = evaluate(ENGINES[name], facts)
        if any(f.rule.rsplit(".", 1)[-1] in SCALE_RULES for f in findings):
            return True
    return False


def _verify(work: _Work, config: dict, tensors: dict, names: list[str]) -> list[str]:
    """The promise of ``convert --for``: every engine asked for now says ``serves``."""
    facts = _facts(config, tensors, work)
    flags: list[str] = []
    for name in names:
        verdict, findings = evaluate(ENGINES[name], facts)
        if verdict != "serves":
            bad = "; ".join(f.message for f in findings if f.verdict != "flag")
            raise AdapterctlError(f"internal error: the converted adapter still gets "
                                  f"'{verdict}' from {name}: {bad}",
                                  hint="This is a bug in adapterctl; please report it.")
        flags += [flag for f in findings for flag in f.flags if "--max-loras" not in flag]
    return list(dict.fromkeys(flags))


def output_name(source: str, engine: str) -> str:
    return f"{Path(source.rstrip('/')).name}-{engine.replace('.', '')}"
