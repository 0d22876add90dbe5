"""What a serving engine cannot hold as trained, for ``convert --for`` (for_engine.py): lora_B
biases, full weight replacements (modules_to_save, saved embeddings, base biases),
trainable-token rows and LoRA modules the engine never adapts. Each is turned into an exact
full-rank LoRA where the engine adapts that module (full_rank.py), dropped exactly when it
equals the base, and otherwise refused by name or dropped with ``--drop-unsupported`` (what that
changes is reported)."""

from __future__ import annotations

import math

import torch

from adapterctl.core.adapter.base_info import is_embedding_name, is_lm_head_name
from adapterctl.core.convert import full_rank as FR
from adapterctl.core.convert.engine_work import Work
from adapterctl.core.engine_rules.rules import Caps, tensor_fix
from adapterctl.errors import AdapterctlError, UnsupportedError


def drop_hint(work: Work, what: str = "it") -> str:
    """--drop-unsupported's hint; for llama.cpp, also the exact answer: a merged GGUF model."""
    hint = f"--drop-unsupported drops {what} and reports what that changes."
    if "llama.cpp" in work.req.engines:
        hint += (
            f" To keep {what} exactly in llama.cpp/Ollama, serve a merged model instead: "
            f"adapterctl merge {work.req.base_name or 'BASE'} {work.draft.source} --to gguf -o merged.gguf"
        )
    return hint


def lora_biases(work: Work, caps: Caps) -> None:
    with_bias = [p for p, w in work.view.modules.items() if w.bias is not None]
    if not with_bias or caps.lora_bias:
        return
    if not work.req.drop_unsupported:
        raise UnsupportedError(
            f"{work.draft.source}: lora_B biases on {len(with_bias)} modules ({with_bias[0]}, ...):"
            " no LoRA can hold a bias, and the engine does not serve lora_bias",
            hint="--drop-unsupported drops them and reports what that changes.",
        )
    for path in with_bias:
        w = work.view.modules[path]
        assert w.bias is not None, "with_bias holds the modules with a bias"
        sb = w.bias.float() * w.scaling
        work.drop.add(work.keys[path].keys["B_bias"])
        work.removed.append(
            f"{path}.lora_B.bias (lora_bias): output offset of norm "
            f"{float(sb.norm()):.4g}" + _relative(work, path + ".bias", sb, add=True)
        )
    work.config["lora_bias"] = False


def _relative(work: Work, param: str, change: torch.Tensor, add: bool = False) -> str:
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


def full_tensors(work: Work, caps: Caps) -> None:
    facts = work.facts(work.draft.config, work.draft.tensors)
    for t in facts.full_tensors:
        saved = work.draft.tensors[t.key]
        if t.role == "frozen_copy" and _frozen_copy_is_base(work, t, saved):
            work.drop.add(t.key)
            work.notes.append(
                f"{t.key}: PEFT's saved copy of the frozen base layer "
                "(save_embedding_layers), equal to the base's; not written"
            )
            continue
        if work.req.base is not None and _equals_base(work, t.param, saved):
            work.drop.add(t.key)
            work.notes.append(f"{t.key} ({t.role}) equals the base's {t.param}: dropped exactly")
        elif tensor_fix(t, caps) == "base":
            W = work.base_param(t.param, f"{t.param} ({t.role}) as a full-rank LoRA")
            kind = "embedding" if is_embedding_name(t.module) else "linear"
            delta = FR.lora_layout(saved.float() - W.float(), kind, work.conv1d)
            work.add(t.module, FR.full_rank(delta, kind, torch.float32))
            work.drop.add(t.key)
            work.notes.append(
                f"{t.param} ({t.role}) -> LoRA on {t.module} of rank {min(delta.shape)} (exact)"
            )
        else:
            _drop_or_refuse(work, t.key, t.param, f"{t.role}", saved)
    for field, empty in (("modules_to_save", None), ("bias", "none")):
        value = work.config.get(field)
        if value and value != empty:
            work.removed.append(f"config {field}={value!r}")
            work.config[field] = empty


def _frozen_copy_is_base(work: Work, t, saved: torch.Tensor) -> bool:
    if work.req.base is None:
        return True  # PEFT saves the frozen layer as it is; nothing trained it
    return _equals_base(work, t.param, saved)


def _equals_base(work: Work, param: str, saved: torch.Tensor) -> bool:
    try:
        W = work.base_param(param, "")
    except AdapterctlError:
        return False
    return tuple(W.shape) == tuple(saved.shape) and torch.equal(W.to(saved.dtype), saved)


def _drop_or_refuse(work: Work, key: str, param: str, what: str, saved: torch.Tensor) -> None:
    if not work.req.drop_unsupported:
        raise UnsupportedError(
            f"{work.draft.source}: {param} ({what}) cannot be held by a LoRA the engine serves",
            hint=drop_hint(work),
        )
    work.drop.add(key)
    work.removed.append(
        f"{param} ({what}, full weight replacement): norm "
        f"{float(saved.float().norm()):.4g}" + _relative(work, param, saved.float())
    )


def trainable_tokens(work: Work, caps: Caps) -> None:
    tokens = work.view.trainable_tokens
    if not tokens:
        return
    for emb, (indices, rows) in tokens.items():
        key = next(k for k in work.draft.tensors if k.endswith(emb + ".token_adapter.trainable_tokens_delta"))
        if not caps.embedding_lora:
            _drop_or_refuse(work, key, emb + ".weight", "trainable token rows", rows)
            continue
        W = work.base_param(emb + ".weight", "trainable tokens as an embedding LoRA")
        f_emb, f_head = FR.token_rows(indices, rows, W, torch.float32)
        work.add(emb, f_emb)
        head = _tied_head(work)
        if head is not None:
            work.add(head, f_head)
        work.drop.add(key)
        work.notes.append(
            f"{emb}: {len(indices)} trainable token rows -> embedding LoRA of rank "
            f"{len(indices)} (exact)" + (f", and on the tied {head}" if head else "")
        )
    work.config["trainable_token_indices"] = None


def _tied_head(work: Work) -> str | None:
    bf = work.base_info
    if bf is None or not bf.tie_word_embeddings or not bf.params:
        return None
    heads = [
        p[: -len(".weight")]
        for p in bf.params
        if p.endswith(".weight") and is_lm_head_name(p[: -len(".weight")])
    ]
    return heads[0] if heads else "lm_head"


def unservable_modules(work: Work, caps: Caps) -> None:
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
            raise UnsupportedError(
                f"{work.draft.source}: {path}: the engine does not adapt this module with LoRA",
                hint=drop_hint(work),
            )
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
