"""The one loader of a base model with adapters, for every command that runs one (``attach``,
``generate``, and any later command that needs a live model): which argument is the base, where
a missing base comes from, how adapters are named, the early base check, loading with timings.

Order of work, so a wrong pairing fails in milliseconds rather than after minutes of loading:
resolve every adapter (local folder or Hub download) and read it, resolve the base (named, or the
first adapter's ``base_model_name_or_path``), check from the base's headers that the adapters
fit it (:func:`precheck_base`), then load the base and attach.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterctl.core.adapter.base_info import default_base
from adapterctl.core.runtime.model import Placement
from adapterctl.errors import NotFoundError, UsageError
from adapterctl.io.formats.classify import ADAPTER, classify_folder
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

if TYPE_CHECKING:  # for annotations only
    from adapterctl.core.runtime.model import LoadedBase

#: Names an adapter never gets from the naming rule: the engine's and generate's "no adapter"
#: row key, and what a prompts file writes for the base model alone.
RESERVED_NAMES = ("__base__", "base")


@dataclass(frozen=True)
class AdapterChoice:
    """One adapter to attach: what the user typed, its weight in the active sum, and its name
    (None: given by :func:`adapter_names`)."""

    ref: str
    weight: float = 1.0
    name: str | None = None


@dataclass(frozen=True)
class AttachedAdapter:
    """An adapter attached by this session: its name, what the user typed, its local folder, its
    weight, and what the engine reported (modules, devices, warnings)."""

    name: str
    source: str
    folder: Path
    weight: float
    warnings: tuple[str, ...] = ()
    report: object = field(default=None, compare=False, repr=False)  # engine.attach.AttachReport

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "path": str(self.folder),
            "weight": self.weight,
            "warnings": list(self.warnings),
            "key_mapping": getattr(self.report, "key_mapping", None),
        }  # text <-> VLM paths


@dataclass
class Session:
    """A loaded base with its adapters attached (and active, each at its weight)."""

    base: LoadedBase
    adapters: list[AttachedAdapter] = field(default_factory=list)
    load_seconds: float = 0.0
    attach_seconds: float = 0.0
    base_ref: str = ""  # the base as given, or as named by the first adapter's config

    @property
    def reports(self) -> list:
        """The engine's AttachReport of each adapter, in order."""
        return [a.report for a in self.adapters]

    def require_tokenizer(self, purpose: str) -> Any:  # a transformers tokenizer
        """The base's tokenizer; a base without one cannot be used for ``purpose``."""
        if self.base.tokenizer is None:
            raise NotFoundError(
                f"{self.base_ref or self.base.path}: the base model has no tokenizer, so {purpose}",
                hint="Copy tokenizer.json and tokenizer_config.json "
                "(from the model's original repository) into the model folder.",
            )
        return self.base.tokenizer


def split_base_and_adapters(paths: list[str], base: str | None = None) -> tuple[str | None, list[str]]:
    """``[BASE] ADAPTER [ADAPTER...]``: the first argument is the base unless it is a local adapter
    folder (or ``--base`` was given). None as base means: take it from the adapter config."""
    if base is not None:
        return base, list(paths)
    if not paths:
        raise UsageError("give at least one adapter", hint="adapterctl attach [BASE] ADAPTER ...")
    if len(paths) == 1 or classify_folder(paths[0]) == ADAPTER:
        return None, list(paths)
    return paths[0], list(paths[1:])


def name_from_ref(ref: str) -> str:
    """An adapter's name from its folder or Hub id: the last path part (``user/repo@rev`` ->
    ``repo``), with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(ref.rstrip("/").split("@")[0]).name)
    return stem.lstrip(".") or "adapter"


def adapter_names(
    adapters: Sequence[str], names: Sequence[str | None] | None = None, taken: Sequence[str] = ()
) -> list[str]:
    """The one naming rule: a given name is kept (names must be unique); any other adapter is
    named after its folder or Hub id (:func:`name_from_ref`), with ``-2``, ``-3``... where that
    name is taken (also by ``taken``, adapters already attached) or reserved (``__base__``, ``base``)."""
    names = list(names or [None] * len(adapters))
    if len(names) != len(adapters):
        raise UsageError(
            f"{len(names)} --name value(s) for {len(adapters)} adapter(s)",
            hint="Give one --name per adapter, in order.",
        )
    given = [n for n in names if n is not None]
    if len(set(given)) != len(given) or set(given) & set(taken):
        raise UsageError("adapter names must be unique")
    used = set(taken) | set(given)
    out: list[str] = []
    for ref, name in zip(adapters, names):
        if name is None:
            stem = name_from_ref(ref)
            name, i = stem, 2
            while name in used or name in RESERVED_NAMES:
                name, i = f"{stem}-{i}", i + 1
            used.add(name)
        out.append(name)
    return out


def precheck_base(base_dir: Path, shown: str, loaded: list) -> None:
    """Fail before loading the weights when an adapter names none of the base's modules (a Llama
    adapter on GPT-2). Finer checks (shapes, tied heads) run on the loaded model."""
    from adapterctl.core.adapter.base_info import read_base_info
    from adapterctl.core.adapter.compat import check_modules_present
    from adapterctl.core.adapter.prefixes import base_mapping, in_layout_of, vision_problem
    from adapterctl.core.adapter.problems import as_error

    info = read_base_info(base_dir, shown)
    if info.params is None:
        return  # legacy .bin: the loaded model is checked instead
    keys = set(info.params)
    tied = info.tie_word_embeddings  # a tied head has no weight of its own
    for la in loaded:
        mapping = base_mapping([*la.modules, *la.replacements, *la.trainable_tokens], keys)
        problem = mapping and vision_problem(mapping, la.modules, shown)  # text-only extraction
        paths = in_layout_of(la.modules, keys)  # a VLM adapter on its text-only extraction, ...
        problem = problem or check_modules_present(paths, keys, tied, shown, info.model_type)
        if problem:
            raise as_error(problem, la.source)


def base_hub(hub: HubOptions | None) -> HubOptions | None:
    """The adapter's Hub settings for its base: same token, log and progress; no --revision
    (that names the adapter's revision, not the base's)."""
    return replace(hub, revision=None) if hub else None


def _choices(adapters: Sequence[str | AdapterChoice], names, weights) -> list[AdapterChoice]:
    """Plain references, names and weights (the older calling style) as AdapterChoices."""
    choices = [a if isinstance(a, AdapterChoice) else AdapterChoice(str(a)) for a in adapters]
    if weights is not None:
        if len(weights) != len(choices):
            raise UsageError(f"{len(weights)} weight(s) for {len(choices)} adapter(s)")
        choices = [replace(c, weight=float(w)) for c, w in zip(choices, weights)]
    if names is not None:
        choices = [
            replace(c, name=n) for c, n in zip(choices, adapter_names([c.ref for c in choices], names))
        ]
    return choices


def open_session(
    base_ref: str | None,
    adapters: Sequence[str | AdapterChoice],
    *,
    names: list[str] | None = None,
    weights: list[float] | None = None,
    placement: Placement = Placement(),
    hub: HubOptions | None = None,
    trainable: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Session:
    """Load the base (from the first adapter's config when ``base_ref`` is None) and attach every
    adapter, each active at its weight. ``adapters`` are references (folders, Hub ids) or
    :class:`AdapterChoice`; unnamed ones are named by :func:`adapter_names`."""
    from adapterctl.core.lora.loaded import load_adapter
    from adapterctl.core.runtime.attach import attach_adapter
    from adapterctl.core.runtime.model import load_base

    step = on_step or (lambda text: None)
    choices = _choices(adapters, names, weights)
    final = adapter_names([c.ref for c in choices], [c.name for c in choices])
    dirs = [resolve_adapter_dir(c.ref, hub) for c in choices]
    loaded = [load_adapter(d, n, source=c.ref) for d, n, c in zip(dirs, final, choices)]
    if base_ref is None:
        base_ref = default_base(dirs, [c.ref for c in choices])
    base_dir = resolve_model_dir(base_ref, base_hub(hub))
    precheck_base(base_dir, base_ref, loaded)
    step(f"loading base {base_ref}")
    t0 = time.perf_counter()
    lb = load_base(base_dir, placement, hub=base_hub(hub))
    session = Session(lb, load_seconds=time.perf_counter() - t0, base_ref=base_ref)
    t1 = time.perf_counter()
    for la, c, d in zip(loaded, choices, dirs):
        step(f"attaching {la.source} as {la.name!r}")
        report = attach_adapter(lb.model, la, la.name, trainable=trainable, weight=c.weight)
        if report.key_mapping:
            step(
                f"{la.source}: module paths mapped {report.key_mapping['from']} -> "
                f"{report.key_mapping['to']} ({'; '.join(report.key_mapping['rules'])})"
            )
        session.adapters.append(
            AttachedAdapter(la.name, c.ref, Path(d), c.weight, tuple(report.warnings), report)
        )
    session.attach_seconds = time.perf_counter() - t1
    return session


@dataclass(frozen=True)
class AttachSummary:
    """What ``attach`` reports: the base and its placement, each adapter as the engine attached
    it, the active weights, timings, and greedy completions (``attach --prompt``)."""

    base: LoadedBase
    load_seconds: float
    adapters: tuple  # engine.attach.AttachReport per adapter
    active: dict[str, float]
    attach_seconds: float
    completions: tuple = ()  # generate.textgen.Completion per prompt

    def to_dict(self) -> dict:
        return {
            "base": {**self.base.to_dict(), "load_seconds": round(self.load_seconds, 3)},
            "adapters": [r.to_dict() for r in self.adapters],
            "active": dict(self.active),
            "attach_seconds": round(self.attach_seconds, 3),
            "completions": [c.to_dict() for c in self.completions],
        }


def summarize(session: Session, completions: Sequence = ()) -> AttachSummary:
    from adapterctl.core.runtime.attach import active_adapters

    return AttachSummary(
        session.base,
        session.load_seconds,
        tuple(session.reports),
        active_adapters(session.base.model),
        session.attach_seconds,
        tuple(completions),
    )
