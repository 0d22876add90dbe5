"""PEFT LoRA <-> llama.cpp LoRA adapter (GGUF): ``convert --to gguf`` and ``convert --from gguf``.

llama.cpp applies ``W x + scale * B (A x)`` with ``scale = alpha / r`` per tensor pair, ``alpha``
being the one float ``adapter.lora.alpha`` and ``r`` the rank of that pair (``b->ne[0]``), or
``scale = 1`` when alpha is 0 (src/llama-adapter.h ``get_scale``; src/llama-graph.cpp
``build_lora_mm``). PEFT's per-module scaling (spec 2: rsLoRA's alpha/sqrt(r), rank and alpha
patterns) is therefore folded into lora_B relative to that rule: ``B' = B * s / scale``, exact
up to the one float32 rounding of the product. The token embedding is applied as
``scale * get_rows(lora_a, ids) @ lora_b^T`` (``llm_graph_context::build_inp_embd``), so its
lora_a is PEFT's lora_embedding_A transposed, (vocab, r).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapterctl.core.convert.draft import AdapterDraft, view_adapter
from adapterctl.core.engine_rules.gguf_arch import (
    GGUFBase,
    gguf_name,
    gguf_tensor_kind,
    permute_rows,
    tensor_name_map,
)
from adapterctl.errors import (
    IncompatibleBaseError,
    InvalidAdapterError,
    UnsupportedError,
)
from adapterctl.io.checkpoint.adapter_writer import lora_key
from adapterctl.io.folders.output_dir import Input

FOR_ENGINE_HINT = (
    "Rewrite it for llama.cpp first: adapterctl convert --for llama.cpp --base BASE "
    "SOURCE OUT (folds or drops what llama.cpp cannot load, listing each), then "
    "convert that output --to gguf. Or serve a merged model, which keeps everything exactly: "
    "adapterctl merge BASE SOURCE --to gguf -o merged.gguf"
)


@dataclass(frozen=True)
class GGUFExport:
    """``convert --to gguf``'s result (``--json`` shape)."""

    output: str
    source: str
    format: str
    arch: str
    base: str
    lora_alpha: float
    outtype: str
    num_modules: int
    num_tensors: int
    types: dict[str, int]
    folded_scaling: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ollama_modelfile: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def llama_scale(alpha: float, r: int) -> float:
    """The scale llama.cpp gives a tensor pair of rank ``r`` (llama-adapter.h get_scale)."""
    return alpha / r if alpha else 1.0


# ----- PEFT -> GGUF ------------------------------------------------------------------------
def blockers(draft: AdapterDraft, view) -> list[str]:
    """What llama.cpp's LoRA loader cannot express, one line per module or tensor (the hand-off
    to ``convert --for llama.cpp`` belongs here: it removes exactly these)."""
    out = []
    for path, w in view.modules.items():
        if w.magnitude is not None:
            out.append(f"{path}: DoRA magnitude (lora_magnitude_vector)")
        if w.bias is not None:
            out.append(f"{path}: lora_B bias (lora_bias=true)")
        if w.kind == "conv":
            out.append(f"{path}: convolution LoRA")
    out += [
        f"{p}: full weight replacement (modules_to_save / bias / saved embedding)" for p in view.replacements
    ]
    out += [f"{e}: trainable token rows (trainable_token_indices)" for e in view.trainable_tokens]
    return out


def draft_to_gguf_tensors(draft: AdapterDraft, facts: GGUFBase) -> tuple[dict, float, list[str]]:
    """GGUF tensors (float32 numpy, in writing order), adapter.lora.alpha, and the modules whose
    scaling was folded into lora_b."""
    view = view_adapter(draft)
    names = {
        path: _target_name(facts, path, w.kind, draft.source)  # names the module first
        for path, w in view.modules.items()
    }
    bad = blockers(draft, view)
    if bad:
        raise UnsupportedError(
            f"{draft.source}: llama.cpp LoRA adapters cannot express: "
            + "; ".join(bad[:6])
            + (f" (and {len(bad) - 6} more)" if len(bad) > 6 else ""),
            hint=FOR_ENGINE_HINT,
        )
    alpha = float(view.config.lora_alpha)
    tensors, folded = {}, []
    for path, w in sorted(view.modules.items()):
        name = names[path]
        a = w.A.detach().to(torch.float32).cpu().numpy()
        b = w.B.detach().to(torch.float32).cpu().numpy()
        factor = w.scaling / llama_scale(alpha, w.r)
        if factor != 1.0:
            b = (b * np.float32(factor)).astype(np.float32)  # one rounding (spec 2)
            folded.append(path)
        kind = gguf_tensor_kind(facts, name)
        if kind == "token_embd":
            a = np.ascontiguousarray(a.T)  # (vocab, r): rows are gathered by token id
        elif facts.rule.qk_permute and kind == "q":
            b = permute_rows(b, facts.n_head, facts.n_head)
        elif facts.rule.qk_permute and kind == "k":
            b = permute_rows(b, facts.n_head, facts.n_head_kv)
        tensors[name + ".lora_a"] = np.ascontiguousarray(a)
        tensors[name + ".lora_b"] = np.ascontiguousarray(b)
    return tensors, alpha, folded


def _target_name(facts: GGUFBase, path: str, kind: str, source: str) -> str:
    name = gguf_name(facts, path)
    if name is None:
        raise IncompatibleBaseError(
            f"{source}: {path}: llama.cpp's {facts.rule.gguf_arch!r} architecture has no tensor "
            "for this module",
            hint="Is the adapter for this base? Modules llama.cpp cannot "
            "adapt must be dropped from the adapter first.",
        )
    gkind = gguf_tensor_kind(facts, name)
    if kind == "embedding" and gkind != "token_embd":
        raise UnsupportedError(
            f"{source}: {path}: llama.cpp applies embedding LoRA to the token embedding only, not to {name}",
            hint=FOR_ENGINE_HINT,
        )
    if gkind == "token_embd" and (facts.tied or facts.rule.trims_vocab):
        why = (
            "the base ties lm_head to the token embedding, and llama.cpp would apply the "
            "embedding LoRA to the output projection too"
            if facts.tied
            else "llama.cpp's converter cuts the token embedding to the tokenizer's vocabulary"
        )
        raise UnsupportedError(
            f"{source}: {path}: embedding LoRA cannot be expressed for this base: {why}", hint=FOR_ENGINE_HINT
        )
    if gkind == "output" and facts.tied:
        raise UnsupportedError(
            f"{source}: {path}: the base ties lm_head to the token embedding, so llama.cpp has no "
            "separate output tensor to adapt (its own converter refuses this too)",
            hint=FOR_ENGINE_HINT,
        )
    return name


def check_targets(draft: AdapterDraft, facts: GGUFBase) -> None:
    """Refuse, before any conversion work, LoRA modules that have no llama.cpp tensor to adapt
    on this base (what ``convert --for llama.cpp`` cannot change either)."""
    for path, w in view_adapter(draft).modules.items():
        _target_name(facts, path, w.kind, draft.source)


def export_gguf(
    draft: AdapterDraft,
    facts: GGUFBase,
    output: str | Path,
    outtype: str = "f32",
    force: bool = False,
    *,
    inputs: Sequence[Input],
) -> GGUFExport:
    """Write ``draft`` as a llama.cpp LoRA adapter file at ``output`` (atomically), which may
    replace none of the conversion's ``inputs``."""
    from adapterctl.io.folders.output_dir import write_output_file
    from adapterctl.io.formats.gguf_adapter import write_gguf_adapter

    tensors, alpha, folded = draft_to_gguf_tensors(draft, facts)
    with write_output_file(output, force, inputs=inputs, flag="OUT") as tmp:
        stored = write_gguf_adapter(
            tmp, facts.rule.gguf_arch, alpha, tensors, outtype, name=Path(str(output)).stem
        )
    notes = list(draft.notes)
    if folded:
        why = (
            "rsLoRA's alpha/sqrt(r)"
            if view_adapter(draft).config.use_rslora
            else "per-module rank/alpha patterns"
        )
        notes.append(
            f"{len(folded)} module(s) scale differently from llama.cpp's alpha/r "
            f"({why}): their scaling is folded into lora_b (exact)"
        )
    fallback = [k for k, t in stored.items() if outtype == "q8_0" and t != "Q8_0"]
    if fallback:
        notes.append(
            f"{len(fallback)} tensor(s) have rows shorter than a Q8_0 block (32) and "
            "are stored as F16, as llama.cpp's converter does"
        )
    out = str(output)
    return GGUFExport(
        out,
        draft.source,
        "gguf",
        facts.rule.gguf_arch,
        facts.path,
        alpha,
        outtype,
        len(tensors) // 2,
        len(tensors),
        dict(Counter(stored.values())),
        folded,
        list(draft.steps) + ["to-gguf"],
        notes,
        f"ADAPTER ./{Path(out).name}",
    )


# ----- GGUF -> PEFT ------------------------------------------------------------------------
def draft_from_gguf(
    path: str | Path, facts: GGUFBase, base_name: str | None = None, source: str | None = None
) -> AdapterDraft:
    """A llama.cpp LoRA adapter as a PEFT draft: names mapped back through the base checkpoint's
    keys, the q/k permutation undone, ranks per module (rank_pattern), alpha as stored."""
    from adapterctl.io.formats.gguf_adapter import read_gguf_adapter

    src = source or str(path)
    f = read_gguf_adapter(path)
    if f.arch != facts.rule.gguf_arch:
        raise IncompatibleBaseError(
            f"{src}: adapter is for llama.cpp architecture {f.arch!r}, "
            f"the base {facts.path} is {facts.rule.gguf_arch!r}"
        )
    back = _inverse_names(facts, src)
    pairs = _pairs(f.tensors, src)
    tensors, ranks, embedding = {}, {}, set()
    for gname, (a, b) in sorted(pairs.items()):
        if gname not in back:
            raise IncompatibleBaseError(
                f"{src}: {gname}: the base {facts.path} has no tensor with this llama.cpp name",
                hint="Give the base model the adapter was made for with --base.",
            )
        path_ = back[gname]
        kind = gguf_tensor_kind(facts, gname)
        if kind == "token_embd":
            A, B, emb = a.T, b, True  # (vocab, r) -> lora_embedding_A (r, vocab)
        else:
            A, B, emb = a, b, False
            if facts.rule.qk_permute and kind in ("q", "k"):
                B = permute_rows(
                    B, facts.n_head, facts.n_head if kind == "q" else facts.n_head_kv, inverse=True
                )
        if A.shape[0] != B.shape[1]:
            raise InvalidAdapterError(
                f"{src}: {gname}: lora_a {list(a.shape)} and lora_b {list(b.shape)} disagree on the rank"
            )
        ranks[path_] = int(A.shape[0])
        if emb:
            embedding.add(path_)
        tensors[lora_key(path_, "A", emb)] = torch.from_numpy(np.ascontiguousarray(A))
        tensors[lora_key(path_, "B", emb)] = torch.from_numpy(np.ascontiguousarray(B))
    config = _peft_config(f.alpha, ranks, facts, base_name or facts.path)
    draft = AdapterDraft(config, tensors, src, steps=("from-gguf",))
    view_adapter(draft)  # validates shapes against r / rank_pattern
    return draft


def _pairs(tensors: dict, src: str) -> dict[str, tuple]:
    pairs: dict[str, dict] = {}
    for name, t in tensors.items():
        stem, dot, role = name.rpartition(".")
        if not dot or role not in ("lora_a", "lora_b"):
            raise UnsupportedError(
                f"{src}: tensor {name!r} is not a lora_a/lora_b tensor",
                hint="Only plain LoRA pairs can become a PEFT adapter.",
            )
        if t.ndim != 2:
            raise InvalidAdapterError(
                f"{src}: tensor {name!r} has shape {list(t.shape)}, expected 2 dimensions"
            )
        pairs.setdefault(stem, {})[role] = t
    missing = [s for s, p in pairs.items() if len(p) != 2]
    if missing:
        raise InvalidAdapterError(f"{src}: {missing[0]}: has only one of lora_a/lora_b")
    return {s: (p["lora_a"], p["lora_b"]) for s, p in pairs.items()}


def _inverse_names(facts: GGUFBase, src: str) -> dict[str, str]:
    if not facts.keys:
        raise UnsupportedError(
            f"{src}: the base {facts.path} has legacy .bin weights; the "
            "tensor names are read from safetensors headers",
            hint="Use a safetensors copy of the base model.",
        )
    _, names = tensor_name_map(facts)
    back = {}
    for key in sorted(facts.keys):
        if key.endswith(".weight"):
            g = names.get_name(key, try_suffixes=(".weight",))
            if g is not None:
                back.setdefault(g, _module_path(key.removesuffix(".weight"), facts))
    return back


def _module_path(key_stem: str, facts: GGUFBase) -> str:
    """Checkpoint key -> module path as PEFT names it: GPT-2 files may drop ``transformer.``."""
    if facts.rule.gguf_arch == "gpt2" and not key_stem.startswith(("transformer.", "lm_head")):
        return "transformer." + key_stem
    return key_stem


def _peft_config(alpha: float, ranks: dict[str, int], facts: GGUFBase, base_name: str) -> dict:
    """r = the most common rank, rank_pattern for the others (full paths); alpha as stored. With
    alpha 0 llama.cpp's scale is 1, which PEFT expresses as lora_alpha = r per module."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    # full module paths, as PEFT writes them: a dot-aligned suffix match selects only that module
    rank_pattern = {p: k for p, k in ranks.items() if k != r}
    alpha_pattern = dict(rank_pattern) if alpha == 0 else {}
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in ranks})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": _number(alpha) if alpha else r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": _targets(ranks, suffixes, facts),
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "init_lora_weights": True,
    }


def _targets(ranks: dict[str, int], suffixes: list[str], facts: GGUFBase) -> list[str]:
    """Module names when they select exactly the adapted modules of the base, else full paths."""
    stems = {_module_path(k.removesuffix(".weight"), facts) for k in facts.keys if k.endswith(".weight")}
    selected = {s for s in stems if s.rsplit(".", 1)[-1] in suffixes}
    return suffixes if selected == set(ranks) else sorted(ranks)


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)
