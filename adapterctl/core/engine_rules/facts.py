"""What the serving-engine rules look at, read without torch: the adapter's config, its tensor
names and shapes (the safetensors header), and, when a base is known, the base's parameter names
and shapes (its headers) and config.json.

The same facts come from a folder on disk (``check``) or from an adapter held in memory
(``convert --for`` checks its own output before writing it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from adapterctl.core.adapter.compat import base_layer_kind
from adapterctl.core.adapter.config import LoraAdapterConfig, parse_adapter_config
from adapterctl.core.adapter.expert_keys import check_expert_keys, split_expert_keys
from adapterctl.core.adapter.keys import natural_key, split_keys, strip_prefix
from adapterctl.core.adapter.prefixes import KeyMapping, checkpoint_spelling
from adapterctl.core.adapter.problems import raise_first_error
from adapterctl.core.adapter.targeting import layer_index, module_scaling
from adapterctl.io.folders.model_dir import find_checkpoint_key

#: Parameter names PEFT saves for embeddings (spec 4.3).
EMBED_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")
LM_HEAD_NAMES = ("lm_head", "embed_out", "output")


def module_name(path: str) -> str:
    """The last path component: ``q_proj`` for ``model.layers.0.self_attn.q_proj``."""
    return path.rsplit(".", 1)[-1]


def is_embedding_name(path: str) -> bool:
    return module_name(path) in EMBED_NAMES


def is_lm_head_name(path: str) -> bool:
    return module_name(path) in LM_HEAD_NAMES


@dataclass(frozen=True)
class ModuleFacts:
    """One LoRA-adapted module, with PEFT's r, alpha and scaling for it (spec 1.5, 2)."""

    path: str
    kind: str  # linear | conv1d-transposed | embedding | conv
    r: int
    alpha: float
    scaling: float
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    dora: bool = False
    lora_bias: bool = False

    @property
    def name(self) -> str:
        return module_name(self.path)

    @property
    def layer(self) -> int | None:
        return layer_index(self.path, None)


@dataclass(frozen=True)
class FullTensor:
    """A tensor that replaces a base parameter (spec 4.3): ``role`` says why PEFT saved it."""

    key: str  # as stored in the adapter file
    param: str  # runtime parameter path it replaces
    shape: tuple[int, ...]
    role: str  # modules_to_save | bias | embedding | frozen_copy | other

    @property
    def module(self) -> str:
        return self.param.rsplit(".", 1)[0]


@dataclass(frozen=True)
class BaseFacts:
    """What is known about the base: always its config.json; its parameters when its weights
    are safetensors (headers only)."""

    source: str
    config: dict
    params: dict[str, tuple[int, ...]] | None = None

    @property
    def text_config(self) -> dict:
        """Vision-language wrappers keep the language model's sizes in ``text_config``."""
        tc = self.config.get("text_config")
        return tc if isinstance(tc, dict) else self.config

    @property
    def model_type(self) -> str | None:
        mt = self.config.get("model_type")
        return mt if isinstance(mt, str) else None

    @property
    def tie_word_embeddings(self) -> bool:
        for doc in (self.config, self.text_config):
            if "tie_word_embeddings" in doc:
                return bool(doc["tie_word_embeddings"])
        return True  # transformers' PretrainedConfig default

    @property
    def vocab_size(self) -> int | None:
        v = self.text_config.get("vocab_size", self.config.get("vocab_size"))
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def num_layers(self) -> int | None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            v = self.text_config.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    def param_shape(self, param: str) -> tuple[int, ...] | None:
        if self.params is None:
            return None
        key = find_checkpoint_key(param, self.params)
        if key is None and self._spelling is not None and (spelled := self._spelling.map(param)):
            key = find_checkpoint_key(spelled, self.params)  # a VLM saved in its legacy layout
        if (
            key is None
            and param.endswith(".weight")
            and is_lm_head_name(param[:-7])
            and self.tie_word_embeddings
        ):
            # a tied lm_head is not saved: it is the input embedding's table
            key = next((k for k in self.params if k.endswith(".weight") and is_embedding_name(k[:-7])), None)
        return tuple(self.params[key]) if key else None

    @cached_property
    def _spelling(self) -> KeyMapping | None:
        return checkpoint_spelling(self.params) if self.params else None

    @property
    def module_paths(self) -> set[str] | None:
        """Paths of the modules that own a ``.weight`` (what LoRA can sit on)."""
        if self.params is None:
            return None
        return {k[: -len(".weight")] for k in self.params if k.endswith(".weight")}


@dataclass(frozen=True)
class AdapterFacts:
    source: str
    config: LoraAdapterConfig
    modules: tuple[ModuleFacts, ...]
    full_tensors: tuple[FullTensor, ...] = ()
    #: embedding module path -> number of trainable token rows (spec 4.3)
    trainable_tokens: dict[str, int] = field(default_factory=dict)
    unknown_keys: tuple[str, ...] = ()
    #: names of the other files in the adapter folder (``added_tokens.json`` matters to SGLang)
    files: frozenset[str] = frozenset()
    base: BaseFacts | None = None
    #: token ids of the folder's added_tokens.json (tokens added to the vocabulary in training)
    added_token_ids: tuple[int, ...] = ()
    #: ``module.param`` of each target_parameters LoRA (MoE experts; core/adapter/expert_keys.py)
    experts: tuple[str, ...] = ()

    @property
    def max_rank(self) -> int:
        return max([m.r for m in self.modules] or [self.config.r])

    @property
    def config_max_rank(self) -> int:
        """The largest rank the config declares (what vLLM compares with --max-lora-rank)."""
        return max([self.config.r, *map(int, self.config.rank_pattern.values())])

    def by_role(self, *roles: str) -> list[FullTensor]:
        return [t for t in self.full_tensors if t.role in roles]

    @property
    def base_name(self) -> str:
        return self.base.source if self.base else (self.config.base_model_name_or_path or "BASE")


def _role(param: str, raw: str, cfg: LoraAdapterConfig) -> str:
    module = param.rsplit(".", 1)[0]
    if any(module == m or module.endswith("." + m) for m in (cfg.modules_to_save or [])):
        return "modules_to_save"
    if ".base_layer.weight" in raw:
        return "frozen_copy"  # save_embedding_layers: the LoRA-wrapped layer's own weight
    if param.endswith(".bias"):
        return "bias"
    if is_embedding_name(module) or is_lm_head_name(module):
        return "embedding"
    return "other"


def facts_from_parts(
    config_doc: dict,
    shapes: dict[str, tuple[int, ...]],
    source: str,
    files: frozenset[str] = frozenset(),
    base: BaseFacts | None = None,
    added_token_ids: tuple[int, ...] = (),
) -> AdapterFacts:
    """Facts from a parsed adapter_config.json and the tensor names/shapes of its weights."""
    from adapterctl.errors import InvalidAdapterError

    cfg = parse_adapter_config(config_doc, source)
    if not shapes:
        raise InvalidAdapterError(
            f"{source}: the weights file holds no tensors", hint="Save the adapter again after training."
        )
    experts, rest, problems = split_expert_keys(shapes, cfg)
    problems += [
        p for ek in experts.values() for p in check_expert_keys(ek, module_scaling(cfg, ek.path)[0], cfg)
    ]
    raise_first_error(problems, source)
    layout = split_keys(rest)
    model_type = base.model_type if base else None
    modules = []
    for path, mk in layout.modules.items():
        r, alpha, scaling = module_scaling(cfg, path)
        _check_module(mk, r, cfg, source)
        if "A" not in mk.shapes:
            continue  # KaSA's lora_diag alone; the tensor rules name it
        base_shape = base.param_shape(path + ".weight") if base else None
        kind = base_layer_kind(
            mk.embedding, mk.shapes["A"], mk.shapes["B"], base_shape, model_type, cfg.fan_in_fan_out
        )
        modules.append(
            ModuleFacts(
                path,
                kind,
                mk.shapes["A"][0],
                alpha,
                scaling,
                tuple(mk.shapes["A"]),
                tuple(mk.shapes["B"]),
                dora="magnitude" in mk.keys,
                lora_bias="B_bias" in mk.keys,
            )
        )
    full = []
    for param, key in layout.replacements.items():
        full.append(FullTensor(key, param, tuple(shapes[key]), _role(param, strip_prefix(key), cfg)))
    tokens = {emb: int(shapes[key][0]) if shapes[key] else 0 for emb, key in layout.trainable_tokens.items()}
    return AdapterFacts(
        source,
        cfg,
        tuple(modules),
        tuple(sorted(full, key=lambda t: natural_key(t.key))),
        tokens,
        tuple(layout.unknown),
        files,
        base,
        added_token_ids,
        tuple(experts),
    )


def _check_module(mk, r: int, cfg: LoraAdapterConfig, source: str) -> None:
    """Broken files get an error, not verdicts (the same checks as inspect's, spec 11.4)."""
    from adapterctl.errors import InvalidAdapterError

    a, b = mk.shapes.get("A"), mk.shapes.get("B")
    hint = "The file is incomplete or inconsistent; see adapterctl inspect, save it again."
    if (a is None) != (b is None):
        raise InvalidAdapterError(
            f"{source}: {mk.path}: has lora_{'A' if a else 'B'} but no lora_{'B' if a else 'A'}", hint=hint
        )
    if a is None:
        return
    if len(a) < 2 or len(b) < 2 or a[0] != r or (len(a) == 2 and b[1] != a[0]):
        raise InvalidAdapterError(
            f"{source}: {mk.path}: config gives r={r} but lora_A has shape {list(a)} and lora_B {list(b)}",
            hint=hint,
        )
    if "magnitude" in mk.keys and not cfg.use_dora:
        raise InvalidAdapterError(
            f"{source}: {mk.path}: has lora_magnitude_vector but use_dora is false", hint=hint
        )


def read_adapter_facts(
    folder: str | Path, source: str | None = None, base: BaseFacts | None = None
) -> AdapterFacts:
    """Facts of an adapter folder, from adapter_config.json and the safetensors header."""
    from adapterctl.core.adapter.config import check_lora_type, read_adapter_config
    from adapterctl.errors import NotFoundError, UnsupportedError
    from adapterctl.io.folders.adapter_dir import locate_adapter_files
    from adapterctl.io.folders.files import read_json_object
    from adapterctl.io.safetensors.header import read_safetensors_header

    files = locate_adapter_files(folder, source)
    check_lora_type(read_adapter_config(files.config), files.source)
    doc = read_json_object(files.config, "adapter_config.json")
    if files.weights is None:
        raise NotFoundError(
            f"{files.source}: no adapter_model.safetensors (or adapter_model.bin)",
            hint="Copy or download the weights file too.",
        )
    if files.weights_format != "safetensors":
        raise UnsupportedError(
            f"{files.source}: {files.weights.name} is a legacy pickle file",
            hint="check reads safetensors headers only; convert it first: "
            f"adapterctl convert --to-safetensors {files.source} OUT",
        )
    header = read_safetensors_header(files.weights)
    shapes = {k: tuple(t.shape) for k, t in header.tensors.items()}
    names = frozenset(p.name for p in files.root.iterdir())
    added: tuple[int, ...] = ()
    if "added_tokens.json" in names:
        doc_added = read_json_object(files.root / "added_tokens.json", "added_tokens.json")
        added = tuple(sorted(v for v in doc_added.values() if isinstance(v, int) and not isinstance(v, bool)))
    return facts_from_parts(doc, shapes, files.source, names, base, added)


def read_base_facts(folder: str | Path, source: str | None = None) -> BaseFacts:
    """The base's config.json and, for safetensors checkpoints, its parameter shapes."""
    from adapterctl.io.folders.model_dir import locate_model_files, read_model_shapes

    files = locate_model_files(folder, source)
    params = None
    if files.weights_format == "safetensors":
        params = read_model_shapes(files)
    return BaseFacts(source or str(folder), dict(files.config), params)


_LAYER_RE = re.compile(r"\.(\d+)\.")


def layer_of(path: str) -> int | None:
    """The first numeric path component (the decoder layer for the usual layouts)."""
    m = _LAYER_RE.search("." + path + ".")
    return int(m.group(1)) if m else None
