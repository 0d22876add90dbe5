"""PEFT LoRA <-> MLX-LM adapter: ``convert --to mlx`` and ``convert --from mlx``.

mlx-lm (0.32, ``tuner/lora.py``, ``tuner/dora.py``, ``tuner/utils.py``) computes
``y = W x + scale * (x @ lora_a) @ lora_b`` with ``lora_a`` (in, r) and ``lora_b`` (r, out), i.e.
PEFT's A and B transposed; its embedding LoRA adds ``scale * lora_a[ids] @ lora_b`` with lora_a
(vocab, r), again PEFT's lora_embedding_A/B transposed. DoRA on a linear layer is PEFT's
(``m / ||W + scale B A||_row * (W x + scale B A x)``, the norm per output row), so ``m`` is
PEFT's lora_magnitude_vector. One rank and one scale serve every module: a module of lower rank
is zero-padded (exact), and a module whose scaling differs from the global scale has the ratio
folded into lora_b (exact up to one float32 rounding). LoRA goes into the same ``keys`` of each
of the last ``num_layers`` layers; a (layer, key) the adapter does not touch is left out of the
file, and mlx-lm's own initialisation (lora_b = 0; DoRA's m = ||W||) makes it an exact no-op.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapterctl.core.adapter.base_info import read_base_info
from adapterctl.core.convert.draft import AdapterDraft, view_adapter
from adapterctl.errors import InvalidAdapterError, UnsupportedError
from adapterctl.io.checkpoint.adapter_writer import lora_key
from adapterctl.io.folders.output_dir import Input

#: transformers module path prefix -> mlx-lm's, where its model classes name things differently
PREFIXES: dict[str, tuple[str, str]] = {"gpt2": ("transformer.", "model.")}
EMBEDDING_NAMES = {"embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings"}
_LAYER = re.compile(r"^(.*?\.(?:layers|h))\.(\d+)\.(.+)$")
#: written beside mlx-lm's keys so a round trip gives back PEFT's own alpha (mlx-lm ignores it)
PEFT_KEY = "peft_lora"


@dataclass(frozen=True)
class MLXExport:
    output: str
    source: str
    format: str
    fine_tune_type: str
    rank: int
    scale: float
    num_layers: int
    keys: list[str]
    num_modules: int
    num_tensors: int
    padded: list[str] = field(default_factory=list)
    folded_scaling: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MLXBase:
    model_type: str
    n_layers: int
    tied: bool  # the output layer reads the embedding table (BaseInfo.output_is_embedding)
    path: str


def read_mlx_base(base: str | Path, shown: str | None = None) -> MLXBase:
    info = read_base_info(base, shown)
    if info.num_layers is None:
        raise UnsupportedError(f"{info.source}: config.json has no num_hidden_layers")
    return MLXBase(str(info.model_type), info.num_layers, info.output_is_embedding, info.source)


def to_mlx_path(path: str, model_type: str) -> str:
    old, new = PREFIXES.get(model_type, ("", ""))
    return new + path[len(old) :] if old and path.startswith(old) else path


def from_mlx_path(path: str, model_type: str) -> str:
    old, new = PREFIXES.get(model_type, ("", ""))
    return old + path[len(new) :] if new and path.startswith(new) else path


def _refusals(view, base: MLXBase) -> list[str]:
    out = []
    for path, w in view.modules.items():
        leaf = path.rsplit(".", 1)[-1]
        if w.bias is not None:
            out.append(f"{path}: lora_B bias (mlx-lm's LoRA layers have none)")
        if w.kind == "conv":
            out.append(f"{path}: convolution LoRA")
        if w.kind == "embedding" and w.magnitude is not None:
            out.append(
                f"{path}: DoRA on an embedding (mlx-lm normalises per token row, PEFT per "
                "embedding dimension)"
            )
        if w.kind == "embedding" and base.tied:
            out.append(
                f"{path}: embedding LoRA on a base with tied lm_head (mlx-lm would apply it "
                "to the output projection too, PEFT does not)"
            )
        if leaf == "lm_head" and base.tied:
            out.append(
                f"{path}: lm_head LoRA on a base with tied embeddings (mlx-lm has no lm_head module there)"
            )
    out += [
        f"{p}: full weight replacement (modules_to_save / bias / saved embedding)" for p in view.replacements
    ]
    out += [f"{e}: trainable token rows" for e in view.trainable_tokens]
    return out


def draft_to_mlx(draft: AdapterDraft, base: MLXBase) -> tuple[dict, dict, list[str], list[str]]:
    """(mlx adapter_config, mlx tensors, padded modules, folded modules)."""
    view = view_adapter(draft)
    bad = _refusals(view, base)
    if bad:
        raise UnsupportedError(
            f"{draft.source}: MLX-LM adapters have no equivalent for: "
            + "; ".join(bad[:6])
            + (f" (and {len(bad) - 6} more)" if len(bad) > 6 else ""),
            hint="Remove them first (convert --for-serving drops full-weight "
            "extras), or keep using the adapter with PEFT.",
        )
    mods = view.modules
    rank = max(w.r for w in mods.values())
    scale = Counter(w.scaling for w in mods.values()).most_common(1)[0][0]
    tensors, padded, folded, keys, first = {}, [], [], set(), base.n_layers
    for path, w in sorted(mods.items()):
        mpath = to_mlx_path(path, base.model_type)
        m = _LAYER.match(mpath)
        if m:
            first = min(first, int(m.group(2)))
            keys.add(m.group(3))
        else:
            keys.add(mpath)
        a = w.A.detach().to(torch.float32).cpu().numpy()
        b = w.B.detach().to(torch.float32).cpu().numpy()
        if w.scaling != scale:
            b = (b * np.float32(w.scaling / scale if scale else 1.0)).astype(np.float32)
            folded.append(path)
        if w.r < rank:  # zero rows of A / columns of B add nothing to B A
            a = np.concatenate([a, np.zeros((rank - w.r, a.shape[1]), np.float32)])
            b = np.concatenate([b, np.zeros((b.shape[0], rank - w.r), np.float32)], axis=1)
            padded.append(path)
        tensors[mpath + ".lora_a"] = np.ascontiguousarray(a.T)
        tensors[mpath + ".lora_b"] = np.ascontiguousarray(b.T)
        if w.magnitude is not None:
            tensors[mpath + ".m"] = w.magnitude.detach().to(torch.float32).cpu().numpy()
    cfg = view.config
    config = {
        "fine_tune_type": "dora" if cfg.use_dora else "lora",
        "num_layers": base.n_layers - first if first < base.n_layers else 0,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": sorted(keys)},
        "model": cfg.base_model_name_or_path or base.path,
        PEFT_KEY: {"lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora, "r": rank},
    }
    return config, tensors, padded, folded


def export_mlx(
    draft: AdapterDraft, base: MLXBase, output: str | Path, force: bool = False, *, inputs: Sequence[Input]
) -> MLXExport:
    """Write ``draft`` as an MLX-LM adapter folder at ``output`` (atomically), which may replace
    none of the conversion's ``inputs``."""
    from adapterctl.io.folders.output_dir import write_output_dir
    from adapterctl.io.formats.mlx_adapter import write_mlx_files

    config, tensors, padded, folded = draft_to_mlx(draft, base)
    with write_output_dir(output, force, inputs=inputs, flag="OUT") as tmp:
        write_mlx_files(tmp, config, tensors)
    notes = list(draft.notes)
    lp = config["lora_parameters"]
    if padded:
        notes.append(
            f"{len(padded)} module(s) of lower rank are zero-padded to mlx-lm's one rank {lp['rank']} (exact)"
        )
    if folded:
        notes.append(
            f"{len(folded)} module(s) scale differently from mlx-lm's one scale "
            f"{lp['scale']:.6g}: the ratio is folded into lora_b (exact)"
        )
    n_mod = sum(1 for k in tensors if k.endswith(".lora_a"))
    return MLXExport(
        str(output),
        draft.source,
        "mlx",
        config["fine_tune_type"],
        lp["rank"],
        lp["scale"],
        config["num_layers"],
        lp["keys"],
        n_mod,
        len(tensors),
        padded,
        folded,
        list(draft.steps) + ["to-mlx"],
        notes,
    )


# ----- MLX -> PEFT -------------------------------------------------------------------------
def draft_from_mlx(
    folder: str | Path, model_type: str | None, base_name: str | None = None, source: str | None = None
) -> AdapterDraft:
    """An mlx-lm adapter folder as a PEFT draft (LoRA or DoRA; ``full`` fine-tunes refused)."""
    from adapterctl.io.formats.mlx_adapter import read_mlx_header, read_mlx_tensors

    src = source or str(folder)
    head = read_mlx_header(folder)
    cfg = head.config
    kind = cfg.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise UnsupportedError(
            f"{src}: fine_tune_type {kind!r} is not a LoRA adapter",
            hint="A full fine-tune is a model, not an adapter.",
        )
    lp = cfg.get("lora_parameters")
    if not (
        isinstance(lp, dict)
        and isinstance(lp.get("rank"), int)
        and lp["rank"] > 0
        and isinstance(lp.get("scale"), (int, float))
    ):
        raise InvalidAdapterError(
            f"{src}: adapter_config.json needs lora_parameters with an integer rank and a numeric scale"
        )
    rank, scale = lp["rank"], float(lp["scale"])
    arrays = read_mlx_tensors(head)
    modules: dict[str, dict] = {}
    for name, arr in arrays.items():
        stem, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b", "m"):
            raise UnsupportedError(f"{src}: tensor {name!r} is not lora_a, lora_b or m")
        modules.setdefault(stem, {})[leaf] = arr
    tensors = {}
    for stem, parts in sorted(modules.items()):
        path = from_mlx_path(stem, model_type or "")
        emb = path.rsplit(".", 1)[-1] in EMBEDDING_NAMES
        if "lora_a" not in parts or "lora_b" not in parts:
            raise InvalidAdapterError(f"{src}: {stem}: needs both lora_a and lora_b")
        a, b = parts["lora_a"], parts["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise InvalidAdapterError(
                f"{src}: {stem}: lora_a {list(a.shape)} / lora_b {list(b.shape)} do not have rank {rank}"
            )
        if emb and kind == "dora":
            raise UnsupportedError(
                f"{src}: {stem}: DoRA on an embedding normalises per token row "
                "in mlx-lm, per embedding dimension in PEFT: no equivalent"
            )
        tensors[lora_key(path, "A", emb)] = torch.from_numpy(np.ascontiguousarray(a.T))
        tensors[lora_key(path, "B", emb)] = torch.from_numpy(np.ascontiguousarray(b.T))
        if kind == "dora":
            if "m" not in parts:
                raise InvalidAdapterError(f"{src}: {stem}: DoRA adapter without m")
            tensors[lora_key(path, "magnitude")] = torch.from_numpy(np.array(parts["m"]))
    if not tensors:
        raise InvalidAdapterError(f"{src}: {head.root / 'adapters.safetensors'} holds no tensors")
    alpha, rslora = _alpha_for(cfg.get(PEFT_KEY), rank, scale)
    suffixes = sorted({from_mlx_path(s, model_type or "").rsplit(".", 1)[-1] for s in modules})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "use_dora": kind == "dora",
        "target_modules": suffixes,
        "base_model_name_or_path": base_name or cfg.get("model"),
        "bias": "none",
        "init_lora_weights": True,
    }
    draft = AdapterDraft(config, tensors, src, steps=("from-mlx",))
    view_adapter(draft)
    return draft


def _alpha_for(saved, rank: int, scale: float) -> tuple[float, bool]:
    """lora_alpha (and use_rslora) giving PEFT scaling == ``scale``: PEFT's own values when this
    folder was written by ``convert --to mlx`` and they still give that scale, else scale * r."""
    if isinstance(saved, dict) and saved.get("r") == rank:
        alpha, rs = saved.get("lora_alpha"), bool(saved.get("use_rslora"))
        if isinstance(alpha, (int, float)) and (alpha / (math.sqrt(rank) if rs else rank)) == scale:
            return alpha, rs
    alpha = scale * rank
    return (int(alpha) if float(alpha).is_integer() else alpha), False
