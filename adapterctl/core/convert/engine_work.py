"""The state of one ``convert --for`` run (for_engine.py): the adapter as per-module factors,
the config being rewritten, what is dropped and reported, and the base, read lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from adapterctl.core.adapter.base_info import BaseInfo, read_base_info
from adapterctl.core.adapter.compat import CONV1D_MODEL_TYPES
from adapterctl.core.convert import full_rank as FR
from adapterctl.core.convert.draft import (
    AdapterDraft,
    ModuleReport,
    module_keys,
    view_adapter,
)
from adapterctl.core.engine_rules.facts import AdapterFacts, facts_from_parts
from adapterctl.errors import UsageError

if TYPE_CHECKING:
    from adapterctl.io.hub.ref import HubOptions

PREFIX = "base_model.model."


@dataclass(frozen=True)
class ForEngine:
    engines: tuple[str, ...]
    base: str | None = None  # local folder
    base_name: str | None = None
    rank: int | None = None
    energy: float | None = None
    drop_unsupported: bool = False
    #: how the adapter's own base (``base_model_name_or_path``) is fetched when a step needs the
    #: base and ``base`` is None (Hub settings without the adapter's revision)
    hub: HubOptions | None = None


class Work:
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
        #: (local folder, name) of the base once known: --base, else the adapter's own on first need
        #: (a Hub base as header stubs: shapes are most steps' need)
        self._base = (req.base, req.base_name or req.base) if req.base else None
        #: the folder base_param reads: --base, else the adapter's own base, its weights fetched then
        self._weights: str | None = req.base
        self.base_info: BaseInfo | None = read_base_info(req.base, req.base_name) if req.base else None

    @property
    def conv1d(self) -> bool:
        return bool(self.base_info and self.base_info.model_type in CONV1D_MODEL_TYPES)

    def base(self, why: str) -> BaseInfo:
        """The base a step cannot do without: ``--base``, else the adapter's
        ``base_model_name_or_path`` (a local folder, or a Hub id fetched as every command fetches
        a base: core/adapter/base_info.default_base); a usage error when neither names one."""
        if self._base is None:
            name = self.draft.config.get("base_model_name_or_path")
            if not isinstance(name, str) or not name:
                raise UsageError(
                    f"{self.draft.source}: {why} needs the base, and adapter_config.json has no "
                    "base_model_name_or_path",
                    hint="Add --base BASE (the model the adapter was trained on).",
                )
            from adapterctl.io.hub.resolve import resolve_model_dir

            # config and parameter shapes: a Hub base's weights only when a step reads them
            folder = resolve_model_dir(name, self.req.hub, need_weights=False, header_only=True)
            self._base = (str(folder), name)
            self.base_info = read_base_info(*self._base)
        assert self.base_info is not None  # set with _base
        return self.base_info

    def base_param(self, param: str, why: str) -> torch.Tensor:
        self.base(why or f"reading {param}")
        if self._reader is None:
            from adapterctl.io.checkpoint.reader import CheckpointReader
            from adapterctl.io.folders.model_dir import locate_model_files
            from adapterctl.io.hub.resolve import resolve_model_dir

            assert self._base is not None  # set by self.base()
            name = self._base[1]
            if self._weights is None:  # the adapter's own base: now its weights too
                self._weights = str(resolve_model_dir(name, self.req.hub))
            self._reader = CheckpointReader(locate_model_files(self._weights, name))
        return self._reader.load_param(param, self.draft.source)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def facts(self, config: dict, tensors: dict) -> AdapterFacts:
        """The engines' view of a candidate output (headers' worth: names and shapes)."""
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        return facts_from_parts(config, shapes, self.draft.source, base=self.base_info)

    def add(self, path: str, f: FR.Factors) -> None:
        """Add factors to a module (concatenated with any LoRA it already has: ranks add)."""
        have = self.mods.get(path)
        self.mods[path] = FR.concat(have, f) if have is not None else f
