"""What the serving-engine rules look at, read without torch: the adapter's config, its tensor
names and shapes (the safetensors header), and, when a base is known, the base's parameter names
and shapes (its headers) and config.json.

The same facts come from a folder on disk (``check``) or from an adapter held in memory
(``convert --for`` checks its own output before writing it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.core.adapter.base_info import BaseInfo, is_embedding_name, is_lm_head_name, module_name
from adapterctl.core.adapter.compat import base_layer_kind
from adapterctl.core.adapter.config import LoraAdapterConfig, parse_adapter_config
from adapterctl.core.adapter.keys import natural_key, strip_prefix
from adapterctl.core.adapter.problems import raise_first_error
from adapterctl.core.adapter.targeting import layer_index, module_scaling
from adapterctl.core.adapter.validate import check_tensors, weights_problems


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
    base: BaseInfo | None = None
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
    base: BaseInfo | None = None,
    added_token_ids: tuple[int, ...] = (),
) -> AdapterFacts:
    """Facts from a parsed adapter_config.json and the tensor names/shapes of its weights."""

    cfg = parse_adapter_config(config_doc, source)
    check = check_tensors(cfg, shapes)  # broken files get an error, not verdicts (spec 11.4)
    raise_first_error(check.problems, source)
    layout, experts = check.layout, check.experts
    model_type = base.model_type if base else None
    modules = []
    for path, mk in layout.modules.items():
        r, alpha, scaling = module_scaling(cfg, path)
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


def read_adapter_facts(
    folder: str | Path, source: str | None = None, base: BaseInfo | None = None
) -> AdapterFacts:
    """Facts of an adapter folder, from adapter_config.json and the safetensors header."""
    from adapterctl.core.adapter.config import check_lora_type, read_adapter_config
    from adapterctl.io.folders.adapter_dir import locate_adapter_files
    from adapterctl.io.folders.files import read_json_object
    from adapterctl.io.safetensors.header import read_safetensors_header

    files = locate_adapter_files(folder, source)
    check_lora_type(read_adapter_config(files.config), files.source)
    doc = read_json_object(files.config, "adapter_config.json")
    raise_first_error(weights_problems(files, headers_only="check"))
    assert files.weights is not None  # weights_problems raised on a missing weights file
    header = read_safetensors_header(files.weights)
    shapes = {k: tuple(t.shape) for k, t in header.tensors.items()}
    names = frozenset(p.name for p in files.root.iterdir())
    added: tuple[int, ...] = ()
    if "added_tokens.json" in names:
        doc_added = read_json_object(files.root / "added_tokens.json", "added_tokens.json")
        added = tuple(sorted(v for v in doc_added.values() if isinstance(v, int) and not isinstance(v, bool)))
    return facts_from_parts(doc, shapes, files.source, names, base, added)


_LAYER_RE = re.compile(r"\.(\d+)\.")


def layer_of(path: str) -> int | None:
    """The first numeric path component (the decoder layer for the usual layouts)."""
    m = _LAYER_RE.search("." + path + ".")
    return int(m.group(1)) if m else None
