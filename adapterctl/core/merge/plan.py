"""Plan a streamed merge: base checkpoint + adapter deltas, decided tensor by tensor from the
checkpoint's headers and the adapters, without building the model (spec sections 6 and 11).

``plan_merge`` maps every adapter tensor onto a base checkpoint key (runtime module paths ->
checkpoint keys, through transformers' conversion tables and tied embeddings) and returns a
:class:`MergeJob` whose ``plan`` (a :class:`MergePlan`) says what will be written;
:func:`adapterctl.core.merge.write.execute_merge` streams it to disk.

Semantics: the merged model is the attached one (PEFT's unmerged forward, the oracle): full
replacement tensors first (they describe the base as trained), then the LoRA deltas, lora_B
biases, trainable-token rows; modules_to_save copies replace their module's output. On a tied
model the two ends of the one table get what each end got when attached, untying the table where
they differ (core/merge/tied.py, spec 10.12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter.config import RANDOMISED_INITS, RECOMPUTABLE_INITS
from adapterctl.core.adapter.prefixes import checkpoint_spelling
from adapterctl.core.adapter.problems import as_error
from adapterctl.core.adapter.targeting import in_modules_to_save
from adapterctl.core.adapter.variants import layer_map
from adapterctl.core.lora.combine import check_combination
from adapterctl.core.lora.expert_delta import ExpertOp
from adapterctl.core.lora.loaded import LoadedAdapter, LoraWeights, load_adapter
from adapterctl.core.lora.remap import map_to_checkpoint
from adapterctl.core.merge.expert_slices import add_expert_ops
from adapterctl.core.merge.qlora import QloraPlan, plan_qlora
from adapterctl.core.merge.replicated import replicate_entries
from adapterctl.core.merge.tied import find_tie, split_tied
from adapterctl.errors import IncompatibleBaseError, UnsupportedError, UsageError
from adapterctl.io.checkpoint.reader import CheckpointReader, base_float_dtype, checkpoint_renames
from adapterctl.io.checkpoint.shard_writer import TensorSpec, plan_shards
from adapterctl.io.checkpoint.stored import FLOAT_DTYPES, StoredTensor, dtype_name, torch_dtype
from adapterctl.io.folders.model_card import card_base
from adapterctl.io.folders.model_dir import (
    ModelFiles,
    find_checkpoint_key,
    locate_model_files,
)


@dataclass(frozen=True)
class MergeOptions:
    weights: tuple[float, ...] | None = None  # default: 1 for every adapter
    combination: str = "linear"
    density: float | None = None
    seed: int = 0
    dtype: str | None = None  # None: the base's
    max_shard_size: int = 5_000_000_000
    #: a tied table gets every delta, as PEFT's merge_and_unload does (core/merge/tied.py)
    tied_like_peft: bool = False
    #: merge into the bitsandbytes 4-bit round trip of the base ("nf4" | "fp4"; core/merge/qlora.py)
    qlora: str | None = None
    qlora_double_quant: bool = False


@dataclass(frozen=True)
class LoraOp:
    adapter: int
    weights: LoraWeights
    kind: C.LayerKind  # the base layer's: linear | conv1d-transposed | embedding | conv


@dataclass(frozen=True)
class TensorTask:
    """What happens to one output tensor. ``source`` is the base tensor it starts from."""

    key: str
    source: StoredTensor
    out_dtype: torch.dtype
    replacement: tuple[int, torch.Tensor] | None = None  # in place (shared storage), applied first
    residual_init: str | None = None  # "pissa" | "olora" | "kasa": recompute the mutated base (1.7)
    loras: tuple[LoraOp, ...] = ()
    bias_loras: tuple[LoraOp, ...] = ()
    tokens: tuple[tuple[int, list[int], torch.Tensor], ...] = ()
    copy: tuple[int, torch.Tensor] | None = None  # a modules_to_save copy: the output, as a whole
    experts: tuple[ExpertOp, ...] = ()  # target_parameters: expert slices (core/merge/expert_slices.py)

    @property
    def changed(self) -> bool:
        return bool(
            self.replacement or self.loras or self.bias_loras or self.tokens or self.copy or self.experts
        )

    @property
    def changed_beyond_loras(self) -> bool:
        return bool(
            self.replacement
            or self.residual_init
            or self.bias_loras
            or self.tokens
            or self.copy
            or self.experts
        )

    def sources(self, names: list[str]) -> list[str]:
        out = [f"replace:{names[self.replacement[0]]}"] if self.replacement else []
        out += [f"lora:{names[op.adapter]}" for op in self.loras]
        out += [f"lora_bias:{names[op.adapter]}" for op in self.bias_loras]
        out += [f"experts:{n}" for n in dict.fromkeys(names[op.adapter] for op in self.experts)]
        out += [f"tokens:{names[t[0]]}" for t in self.tokens]
        return out + ([f"copy:{names[self.copy[0]]}"] if self.copy else [])


@dataclass(frozen=True)
class MergePlan:
    base: str
    base_format: str
    model_type: str | None
    adapters: list[dict]
    combination: str
    density: float | None
    seed: int
    dtype: str
    base_dtype: str
    num_tensors: int
    touched: list[dict]
    output_bytes: int
    shards: list[str]
    untie_embeddings: bool
    warnings: list[str] = field(default_factory=list)
    qlora: dict = field(default_factory=dict)  # QloraPlan.to_dict() (core/merge/qlora.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_touched"] = len(self.touched)
        d["num_shards"] = len(self.shards)
        return d


@dataclass
class MergeJob:
    """The plan plus what executing it needs (loaded adapters, tasks, shard layout)."""

    files: ModelFiles
    adapters: list[LoadedAdapter]
    options: MergeOptions
    tasks: list[TensorTask]
    shard_plan: list
    plan: MergePlan
    #: config.json fields the output changes besides dtype and ties (layer_replication)
    config_updates: dict = field(default_factory=dict)
    qlora: QloraPlan | None = None  # the base as a QLoRA adapter saw it (core/merge/qlora.py)


# ----- checkpoint keys ------------------------------------------------------------------------
class KeyIndex:
    """Runtime parameter path -> checkpoint key: exact, base-model prefix dropped or added, then
    transformers' conversion tables; ``lm_head.weight`` of a tied model -> the embedding's key."""

    def __init__(self, keys: list[str], config: dict | str | None):
        self.keys = set(keys)
        self.config = config  # config.json (or its model_type): which conversions apply
        self._renamed: tuple[dict[str, str], dict[str, list[str]]] | None = None
        self.alias: dict[str, str] = {}
        self._spelling = checkpoint_spelling(self.keys)  # VLMs saved in their legacy layout

    def _tables(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        if self._renamed is None:  # imports transformers (seconds): only when a name misses
            self._renamed = checkpoint_renames(self.config, self.keys)
        return self._renamed

    @property
    def fused(self) -> dict[str, list[str]]:
        return self._tables()[1]

    def find_stored(self, param: str) -> str | None:
        """The key by name alone (exact, prefix, legacy spelling): no transformers table."""
        key = find_checkpoint_key(param, self.keys)
        if key is None and self._spelling is not None and (spelled := self._spelling.map(param)):
            key = find_checkpoint_key(spelled, self.keys)
        return key

    def find(self, param: str) -> str | None:
        if param in self.alias:
            return self.alias[param]
        key = self.find_stored(param)
        if key is None:
            renamed = self._tables()[0]
            found = find_checkpoint_key(param, renamed) if renamed else None
            key = renamed[found] if found else None
        return key


# ----- planning -------------------------------------------------------------------------------
def _missing(adapter: LoadedAdapter, what: str, param: str, index: KeyIndex):
    stored = next((k for k, names in index.fused.items() if param in names), None)
    if stored is not None:
        return UnsupportedError(
            f"{adapter.source}: {what} {param} is built on load from part of the checkpoint's "
            f"{stored} (transformers fuses or splits it): merging into part of a stored tensor "
            "is not implemented",
            hint="Attach the adapter instead (adapterctl attach / generate).",
        )
    return IncompatibleBaseError(
        f"{adapter.source}: {what} {param} lands nowhere: the base checkpoint has no such parameter",
        hint="Is this adapter for another model? Check with: adapterctl inspect ADAPTER --base BASE",
    )


def _add_loras(
    i: int, ad: LoadedAdapter, index: KeyIndex, shapes: dict, model_type: str | None, ops: dict
) -> None:
    for path, w in ad.modules.items():
        key = index.find(path + ".weight")
        if key is None:
            raise _missing(ad, "LoRA module", path + ".weight", index)
        kind = C.base_layer_kind(
            w.kind is C.LayerKind.EMBEDDING,
            w.A.shape,
            w.B.shape,
            shapes[key],
            model_type,
            ad.config.fan_in_fan_out,
        )
        problem = C.check_shapes(
            path, kind, w.A.shape, w.B.shape, shapes[key], None if w.bias is None else w.bias.shape
        )
        if problem:
            raise as_error(problem, ad.source)
        ops.setdefault(key, {}).setdefault("loras", []).append(LoraOp(i, w, kind))
        if w.bias is not None:
            bkey = index.find(path + ".bias")
            if bkey is None:
                # attach adds it at run time; a checkpoint has no tensor to hold it (spec 1.4)
                raise UnsupportedError(
                    f"{ad.source}: lora_bias on {path}, whose base layer has no "
                    "bias: a merged checkpoint has no bias tensor to put it in",
                    hint="Attach the adapter instead (adapterctl attach / "
                    "generate); PEFT cannot merge it either.",
                )
            ops.setdefault(bkey, {}).setdefault("bias_loras", []).append(LoraOp(i, w, kind))


def _add_extras(
    i: int, ad: LoadedAdapter, index: KeyIndex, shapes: dict, tie, ops: dict, *, like_peft: bool
) -> None:
    for param, t in ad.replacements.items():
        key = index.find(param)
        if key is None:
            raise _missing(ad, "saved tensor", param, index)
        problem = C.check_replacement(param, t.shape, shapes[key])
        if problem:
            raise as_error(problem, ad.source)
        is_copy = in_modules_to_save(ad.config, param.rsplit(".", 1)[0])
        head = like_peft and tie and param == tie[0]
        slot = ("copy_head" if head else "copy") if is_copy else "replacement"
        entry = ops.setdefault(key, {})
        if slot in entry and torch.equal(entry[slot][1], t):
            continue  # the same table saved twice (PEFT saves a tied table under both names)
        if slot in entry:
            raise UsageError(
                f"two adapters replace {param}",
                hint="PEFT keeps only the active adapter's copy; merge these adapters one at a time.",
            )
        entry[slot] = (i, t)
    for emb, (idx, rows) in ad.trainable_tokens.items():
        key = index.find(emb + ".weight")
        if key is None:
            raise _missing(ad, "trainable tokens of", emb + ".weight", index)
        problem = C.check_token_rows(emb, idx, rows.shape, shapes[key])
        if problem:
            raise as_error(problem, ad.source)
        ops.setdefault(key, {}).setdefault("tokens", []).append((i, idx, rows))


def _check_adapters(adapters: list[LoadedAdapter], options: MergeOptions) -> None:
    check_combination(options.combination, options.density, len(adapters))
    if options.weights is not None and len(options.weights) != len(adapters):
        raise UsageError(
            f"--weights has {len(options.weights)} values for {len(adapters)} adapters",
            hint="Give one weight per adapter, e.g. --weights 0.7,0.3.",
        )
    for ad in adapters:
        if ad.experts and options.combination != "linear":
            raise UnsupportedError(
                f"{ad.source}: target_parameters (MoE expert) LoRA cannot be "
                f"merged with --combination {options.combination}",
                hint="Use the default linear combination.",
            )
        init = ad.config.init_kind
        if init in RANDOMISED_INITS:
            raise UnsupportedError(
                f"{ad.source}: init_lora_weights={ad.config.init_lora_weights!r} "
                "uses a randomised SVD whose residual cannot be recomputed exactly",
                hint="Convert it to plain LoRA first (adapterctl convert).",
            )
        init = "KaSA" if ad.config.kasa else init
        if (init in RECOMPUTABLE_INITS or init == "KaSA") and len(adapters) > 1:
            raise UnsupportedError(
                f"{ad.source}: {init} adapters mutate the base; merging one with other adapters is ambiguous",
                hint="Convert it first (adapterctl convert), then merge the plain LoRA adapters.",
            )
        if ad.config.use_dora and options.combination != "linear":
            raise UnsupportedError(
                f"{ad.source}: DoRA cannot be combined with --combination {options.combination}",
                hint="Use the default linear combination.",
            )


def _task(s: StoredTensor, key: str, out_dtype: torch.dtype, entry: dict, adapters, copy_slot: str):
    init = None
    loras = tuple(entry.get("loras", ()))
    cfg = adapters[loras[0].adapter].config if loras else None
    if (
        cfg
        and cfg.init_kind in RECOMPUTABLE_INITS
        and loras[0].kind in (C.LayerKind.LINEAR, C.LayerKind.CONV1D_GPT2)
    ):
        # PEFT's PiSSA/OLoRA initialisers mutate Linear/Conv1D weights only, never embeddings
        # or convs (the engine recomputes residuals for the same layers)
        init = cfg.init_kind
    elif cfg and cfg.kasa and loras[0].kind is C.LayerKind.LINEAR:
        init = "kasa"  # KaSA truncates Linear weights by SVD (core/lora/delta.kasa_truncated)
    dtype = out_dtype if s.dtype in FLOAT_DTYPES else s.dtype
    return TensorTask(
        key,
        s,
        dtype,
        entry.get("replacement"),
        init,
        loras,
        tuple(entry.get("bias_loras", ())),
        tuple(entry.get("tokens", ())),
        entry.get(copy_slot),
        tuple(entry.get("experts", ())),
    )


def build_tasks(
    stored: list[tuple[str, StoredTensor]],
    ops: dict,
    out_dtype: torch.dtype,
    adapters,
    tie: tuple[str, str] | None,
    like_peft: bool = False,
) -> tuple[list[TensorTask], bool]:
    """One task per output tensor, in checkpoint order; an untied lm_head follows its embedding.

    A tied table: the merged model is the attached one (core/merge/tied.py); with ``like_peft``
    every delta went into the one table, and only a modules_to_save copy unties it (PEFT)."""
    tasks, untie = [], False
    for key, s in stored:
        entry = ops.get(key, {})
        if tie and key == tie[1] and not like_peft:
            entry, head = split_tied(entry, ops.get(tie[0], {}), tie)
            tasks.append(_task(s, key, out_dtype, entry, adapters, "copy"))
            if head is not None:  # the two ends differ: write lm_head and untie the config
                untie = True
                tasks.append(_task(s, tie[0], out_dtype, head, adapters, "copy"))
            continue
        tasks.append(_task(s, key, out_dtype, entry, adapters, "copy"))
        if tie and key == tie[1] and ("copy" in entry or "copy_head" in entry):
            untie = True  # the two tables now differ: write lm_head and untie the config
            tasks.append(_task(s, tie[0], out_dtype, entry, adapters, "copy_head"))
    return tasks, untie


def _warnings(adapters: list[LoadedAdapter], base: str) -> list[str]:
    out = []
    for ad in adapters:
        if ad.config.kasa:
            out.append(
                f"{ad.source}: KaSA adapter: each adapted Linear weight loses its r "
                "smallest singular components first, as PEFT does when adding it"
            )
        if ad.config.init_kind in RECOMPUTABLE_INITS:
            out.append(
                f"{ad.source}: {ad.config.init_kind} adapter: the residual base W - s·B0@A0 "
                "is recomputed from the base (spec 1.7)"
            )
        problem = C.base_name_problem(ad.config.base_model_name_or_path, base)
        if problem:
            out.append(f"{ad.source}: {problem.text}")
    return out


def _tie_notes(tie: tuple[str, str] | None, untie: bool, options: MergeOptions) -> list[str]:
    if not tie or not untie:
        return []
    if options.tied_like_peft:
        return [
            f"{tie[0]} untied from {tie[1]}: a modules_to_save copy replaces one end "
            "(tie_word_embeddings: false)"
        ]
    return [
        f"{tie[0]} untied from {tie[1]}: the adapter changes the input embedding and the "
        "output layer differently, as attached; writing both tables and tie_word_embeddings: "
        "false (--tied-like-peft puts every delta into the one shared table, as PEFT's "
        "merge_and_unload does)"
    ]


def _layout(
    files: ModelFiles, stored: list[StoredTensor], adapters: list[LoadedAdapter], shown: str
) -> tuple[list[tuple[str, StoredTensor]], dict]:
    """The output tensors as (key, source) pairs: the checkpoint's, or with layer_replication
    its layer list rebuilt (core/merge/replicated.py); plus the config fields that change."""
    entries = [(s.key, s) for s in stored]
    sources = [layer_map(ad.config.raw.get("layer_replication")) for ad in adapters]
    if not any(s is not None for s in sources):
        return entries, {}
    if len(adapters) > 1:
        raise UnsupportedError(
            "layer_replication rebuilds the model's layers for one adapter; "
            "it cannot be merged together with other adapters",
            hint="Merge it alone.",
        )
    only = next(s for s in sources if s is not None)  # the one adapter's map
    return replicate_entries(entries, only, files.config, shown)


def load_adapters(paths: Sequence[str | Path], sources: list[str] | None = None) -> list[LoadedAdapter]:
    sources = sources or [str(p) for p in paths]
    return [load_adapter(p, name=f"adapter{i}", source=src) for i, (p, src) in enumerate(zip(paths, sources))]


def plan_merge(
    base: str | Path, adapters: list[LoadedAdapter], options: MergeOptions, base_source: str | None = None
) -> MergeJob:
    """Check everything that can be checked before writing, and decide every output tensor."""
    files = locate_model_files(base, base_source)
    _check_adapters(adapters, options)
    with CheckpointReader(files) as reader:  # quantized: merged into a dequantized copy (spec 6.4)
        stored = reader.logical_tensors()
    entries, updates = _layout(files, stored, adapters, base_source or str(base))
    shapes = {key: s.shape for key, s in entries}
    index = KeyIndex(list(shapes), files.config)
    tie = find_tie(files.config, files.model_type, index, shapes)
    if tie:
        # like PEFT: lm_head's ops land in the shared table; else they are kept apart under the
        # output parameter's own name until build_tasks decides whether the ends differ
        index.alias[tie[0]] = tie[1] if options.tied_like_peft else tie[0]
        shapes[tie[0]] = shapes[tie[1]]
    adapters, mappings = map_to_checkpoint(adapters, list(shapes), base_source or str(base))
    ops: dict[str, dict] = {}
    for i, ad in enumerate(adapters):
        _add_loras(i, ad, index, shapes, files.model_type, ops)
        add_expert_ops(i, ad, shapes, files.model_type, ops)
        _add_extras(i, ad, index, shapes, tie, ops, like_peft=options.tied_like_peft)
    base_dtype = base_float_dtype(stored)
    out_dtype = torch_dtype(options.dtype) if options.dtype else base_dtype
    tasks, untie = build_tasks(entries, ops, out_dtype, adapters, tie, options.tied_like_peft)
    shard_plan = plan_shards(
        [TensorSpec(t.key, t.out_dtype, t.source.shape) for t in tasks], options.max_shard_size
    )
    qlora = plan_qlora(files, adapters, options.qlora, options.qlora_double_quant, index.find, tasks)
    names = [ad.source for ad in adapters]
    weights = list(options.weights or [1.0] * len(adapters))
    plan = MergePlan(
        base=base_source or str(base),
        base_format=files.weights_format,
        model_type=files.model_type,
        adapters=[
            {
                "source": ad.source,
                "weight": w,
                "modules": len(ad.modules) + len(ad.experts),
                "variants": ad.config.variants,
                "key_mapping": m.to_dict() if m else None,
            }
            for ad, w, m in zip(adapters, weights, mappings)
        ],
        combination=options.combination,
        density=options.density,
        seed=options.seed,
        dtype=dtype_name(out_dtype),
        base_dtype=dtype_name(base_dtype),
        num_tensors=len(tasks),
        touched=[
            {"key": t.key, "shape": list(t.source.shape), "ops": t.sources(names)} for t in tasks if t.changed
        ],
        output_bytes=sum(s.nbytes for s in shard_plan),
        shards=[s.filename for s in shard_plan],
        untie_embeddings=untie,
        warnings=_warnings(adapters, base_source or str(base))
        + _tie_notes(tie, untie, options)
        + card_base(base_source or str(base))[1]
        + list(qlora.warnings),
        qlora=qlora.to_dict(),
    )
    if updates:
        plan.warnings.append(
            f"layer_replication: writing {updates['num_hidden_layers']} layers, "
            "each copy with its own weights and LoRA (the attached model; PEFT's "
            "merge adds every copy's delta into the one shared weight)"
        )
    return MergeJob(files, adapters, options, tasks, shard_plan, plan, updates, qlora)
