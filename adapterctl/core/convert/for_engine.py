"""``convert --for ENGINE``: the same adapter rewritten so that ENGINE serves it as trained, or a
clear refusal naming what no LoRA can hold there.

The engine's rules (core/engine_rules) say what it does with the adapter; this step removes each
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
from dataclasses import replace

import torch

from adapterctl.core.adapter.config import parse_adapter_config
from adapterctl.core.adapter.targeting import module_scaling
from adapterctl.core.convert import engine_extras as extras
from adapterctl.core.convert import full_rank as FR
from adapterctl.core.convert.draft import AdapterDraft, ModuleReport
from adapterctl.core.convert.engine_work import PREFIX, ForEngine, Work
from adapterctl.core.convert.rank_reduce import ranked_config
from adapterctl.core.engine_rules.check import ENGINES, engine_names
from adapterctl.core.engine_rules.lorax import padded_rank
from adapterctl.core.engine_rules.rules import PARTNERS_KIND, SCALE, Caps, evaluate
from adapterctl.errors import AdapterctlError, UnsupportedError, UsageError

__all__ = ["ForEngine", "combined_caps", "convert_for_engine"]


def combined_caps(names: list[str]) -> Caps:
    """What every engine in ``names`` serves (the strictest of each)."""
    caps = [ENGINES[n].caps for n in names]
    ranks = [c.max_rank for c in caps if c.max_rank]
    bools = {
        f: all(getattr(c, f) for c in caps)
        for f in ("rank_pattern", "dora", "lora_bias", "embedding_lora", "lm_head_lora")
    }
    lists = [set(c.lora_modules) for c in caps if c.lora_modules is not None]
    return Caps(
        **bools,
        all_layers=any(c.all_layers for c in caps),
        pad_rank=any(c.pad_rank for c in caps),
        max_rank=min(ranks) if ranks else None,
        lora_modules=tuple(sorted(set.intersection(*lists))) if lists else None,
    )


def convert_for_engine(draft: AdapterDraft, req: ForEngine) -> AdapterDraft:
    names = engine_names(list(req.engines))
    caps = combined_caps(names)
    work = Work(draft, req)
    try:
        _refuse_unfixable(work, names)
        _drop_training_only(work)
        if work.view.config.use_dora and not caps.dora:
            _dora_to_lora(work)
        extras.lora_biases(work, caps)
        extras.full_tensors(work, caps)
        extras.trainable_tokens(work, caps)
        extras.unservable_modules(work, caps)
        if caps.all_layers:
            _fill_layers(work)
        _add_partners(work, names)
        _cap_ranks(work, caps)
        return _finish(work, names, caps)
    finally:
        work.close()


# ----- refusals up front ---------------------------------------------------------------------
def _refuse_unfixable(work: Work, names: list[str]) -> None:
    from adapterctl.core.engine_rules.rules import resized_tables

    facts = work.facts(work.draft.config, work.draft.tensors)
    resized = resized_tables(facts)
    if resized:
        raise UnsupportedError(
            f"{work.draft.source}: {resized[0]}: the adapter was trained with "
            "a resized vocabulary, which no LoRA can add",
            hint="Serve the resized base model (merge the adapter into it: adapterctl merge).",
        )
    for name in names:
        _, findings = evaluate(ENGINES[name], facts)
        for f in findings:
            if f.verdict in ("changes", "refuses") and f.fix is None:
                raise UnsupportedError(
                    f"{work.draft.source}: convert cannot make {name} serve "
                    f"this adapter as trained: {f.message}",
                    hint=f"({f.source.cite()})",
                )


# ----- the steps -------------------------------------------------------------------------------
def _drop_training_only(work: Work) -> None:
    """VeLoRA's vectors serve the backward pass only (the forward never reads them), and no engine
    loads them: dropping them is exact."""
    from adapterctl.core.adapter.keys import split_keys

    layout = split_keys({k: tuple(v.shape) for k, v in work.draft.tensors.items()})
    for key in layout.training_only:
        work.drop.add(key)
        work.removed.append(f"{key} (training-only VeLoRA vector: the forward does not use it)")
    if work.config.get("velora_config"):
        work.removed.append(f"config velora_config={work.config['velora_config']!r}")
        work.config["velora_config"] = None


def _dora_to_lora(work: Work) -> None:
    reps = []
    for path, w in work.view.modules.items():
        if w.magnitude is None:
            continue
        W = work.base_param(path + ".weight", "DoRA -> LoRA (the DoRA weight minus the base)")
        f, rep = FR.dora_as_lora(w, W, work.conv1d and w.kind == "linear", work.req.rank, work.req.energy)
        work.mods[path] = f
        work.drop.add(work.keys[path].keys["magnitude"])
        work.reports.append(ModuleReport(path, rep.r_before, rep.r_after, rep.rel_error, rep.energy))
        reps.append(rep)
    work.config["use_dora"] = False
    err = FR.whole_error(reps)
    work.notes.append(
        f"DoRA -> LoRA: {len(reps)} modules, whole-adapter relative error "
        f"{err:.3e} (||ΔW_dora - ΔW_lora||_F / ||ΔW_dora||_F over all modules); "
        + ("raise --rank (or --energy) for less" if err > 1e-5 else "exact to float32")
    )


def _fill_layers(work: Work) -> None:
    from adapterctl.core.engine_rules.facts import layer_of
    from adapterctl.core.engine_rules.rules import partial_kinds

    config = _target_config(work)
    facts = work.facts(config, _tensors(work, config))
    for name, missing in partial_kinds(facts).items():
        sibling = next(p for p in work.mods if p.rsplit(".", 1)[-1] == name and layer_of(p) is not None)
        idx = layer_of(sibling)
        for i in missing:
            path = sibling.replace(f".{idx}.", f".{i}.", 1)
            work.mods[path] = FR.zeros_like_module(work.mods[sibling])
        work.notes.append(
            f"{name}: zero LoRA added in layers {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} (the engine skips a module kind "
            "that some layer lacks; zeros are exact)"
        )


def _add_partners(work: Work, names: list[str]) -> None:
    """A zero LoRA on the module a stacked projection needs beside the adapted one (SGLang's
    q/k/v and gate/up stacking: rules of kind PARTNERS_KIND): ΔW = 0 there, exact."""
    from adapterctl.core.engine_rules.sglang import missing_partners

    facts = work.facts(work.draft.config, work.draft.tensors)
    wanted = any(
        f.kind == PARTNERS_KIND for n in names for f in evaluate(ENGINES[n], facts)[1] if f.verdict != "flag"
    )
    if not wanted:
        return
    added = []
    for path, partner in missing_partners(work.mods):
        if partner in work.mods:
            continue
        base = work.base(f"a zero LoRA on {partner} (for {path})")
        shape = base.param_shape(partner + ".weight")
        if shape is None:
            raise UsageError(
                f"{work.draft.source}: {path} needs a zero LoRA on {partner}, whose shape the base "
                f"{base.source} does not give",
                hint="Add --base BASE (the model the adapter was trained on).",
            )
        f = work.mods[path]
        work.mods[partner] = FR.Factors(
            "linear", torch.zeros((f.r, shape[1])), torch.zeros((shape[0], f.r)), f.dtype
        )
        added.append(partner)
    if added:
        work.notes.append(
            f"zero LoRA added on {len(added)} modules (e.g. {added[0]}): SGLang stacks q/k/v and "
            "gate/up and cannot load a projection without its partner; zeros are exact"
        )


def _cap_ranks(work: Work, caps: Caps) -> None:
    if caps.max_rank is None:
        return
    big = [p for p, f in work.mods.items() if f.r > caps.max_rank]
    if not big:
        return
    if work.req.rank is None or work.req.rank > caps.max_rank:
        raise UsageError(
            f"{work.draft.source}: {big[0]} has rank {work.mods[big[0]].r}, above "
            f"the {caps.max_rank} the engine accepts",
            hint=f"Add --rank {caps.max_rank} (truncated SVD, error reported).",
        )
    from adapterctl.core.lora.svd import lora_factors, relative_error, svd_of_product

    for p in big:
        f = work.mods[p]
        svd = svd_of_product(f.Bs.flatten(1), f.A.flatten(1))
        k = min(work.req.rank, int(svd.S.numel()))
        A, Bs = lora_factors(svd.truncate(k), 1.0)
        work.mods[p] = replace(f, A=A, Bs=Bs, original=None)
        work.reports.append(ModuleReport(p, f.r, k, relative_error(svd, k)))


# ----- the output config and tensors -----------------------------------------------------------
def _target_config(work: Work, bake: bool = False, uniform: bool = False, pad: int | None = None) -> dict:
    """The output config: targets naming exactly the modules written; ranks as r plus full-path
    rank_pattern; with ``bake``, no rsLoRA and no alpha_pattern, lora_alpha = r (one scale);
    ``pad``: every module zero-padded to that rank (exact)."""
    ranks = {p: f.r for p, f in work.mods.items()}
    if uniform or pad:
        top = max([*ranks.values(), pad or 0])
        ranks = dict.fromkeys(ranks, top)
    doc = ranked_config(work.config, ranks)
    tm = doc.get("target_modules")
    if set(work.mods) != set(work.view.modules) or (isinstance(tm, str) and tm.lower() != "all-linear"):
        doc["target_modules"] = sorted(work.mods)
        doc["layers_to_transform"] = None
        doc["layers_pattern"] = None
    if bake:
        doc.update(use_rslora=False, alpha_pattern={}, lora_alpha=doc["r"])
    return doc


def _tensors(work: Work, config: dict) -> dict[str, torch.Tensor]:
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


def _module_keys(work: Work, path: str, kind: str) -> tuple[str, str]:
    mk = work.keys.get(path)
    if mk is not None:
        return mk.keys["A"], mk.keys["B"]
    if kind == "embedding":
        return f"{PREFIX}{path}.lora_embedding_A", f"{PREFIX}{path}.lora_embedding_B"
    return f"{PREFIX}{path}.lora_A.weight", f"{PREFIX}{path}.lora_B.weight"


def _finish(work: Work, names: list[str], caps: Caps) -> AdapterDraft:
    config = _target_config(work, uniform=not caps.rank_pattern)
    if not caps.rank_pattern and len({f.r for f in work.mods.values()}) > 1:
        work.notes.append(
            f"ranks zero-padded to one r={config['r']} (the engine takes one rank "
            "for every module; zero rows and columns are exact)"
        )
    if _needs_bake(work, config, names):
        pad = _pad_to(config["r"]) if caps.pad_rank else None
        config = _target_config(work, bake=True, uniform=not caps.rank_pattern, pad=pad)
        work.notes.append(
            "scales baked into lora_B (use_rslora=false, no alpha_pattern, "
            f"lora_alpha=r={config['r']}): the engine computes one scale per module "
            "from r and lora_alpha"
            + (
                f"; ranks zero-padded to {pad}, a rank pad_rank leaves as it is at tensor-parallel "
                f"sizes up to {pad // 8}, so its padding no longer rescales later module kinds"
                if pad
                else ""
            )
        )
    tensors = _tensors(work, config)
    flags = _verify(work, config, tensors, names)
    if flags:
        work.notes.append("serve with " + " ".join(flags))
    steps = work.draft.steps + (f"for-{'+'.join(names)}",)
    return replace(
        work.draft,
        config=config,
        tensors=tensors,
        steps=steps,
        notes=work.draft.notes + tuple(work.notes),
        removed=work.draft.removed + tuple(work.removed),
        modules=work.draft.modules + tuple(work.reports),
    )


def _needs_bake(work: Work, config: dict, names: list[str]) -> bool:
    facts = work.facts(config, _tensors(work, config))
    for name in names:
        _, findings = evaluate(ENGINES[name], facts)
        if any(f.kind == SCALE for f in findings):
            return True
    return False


def _pad_to(r: int) -> int:
    """A rank LoRAX's/TGI's pad_rank keeps as it is (at world size 1 and 2 at least): at least
    16 and a multiple of 16. With it config.r never changes while the module kinds load."""
    return max(16, padded_rank(r, 2))


def _verify(work: Work, config: dict, tensors: dict, names: list[str]) -> list[str]:
    """The promise of ``convert --for``: every engine asked for now says ``serves``."""
    facts = work.facts(config, tensors)
    flags: list[str] = []
    for name in names:
        verdict, findings = evaluate(ENGINES[name], facts)
        if verdict != "serves":
            bad = "; ".join(f.message for f in findings if f.verdict != "flag")
            raise AdapterctlError(
                f"internal error: the converted adapter still gets '{verdict}' from {name}: {bad}",
                hint="This is a bug in adapterctl; please report it.",
            )
        flags += [flag for f in findings for flag in f.flags if "--max-loras" not in flag]
    return list(dict.fromkeys(flags))
