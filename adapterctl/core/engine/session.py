"""Base + adapters in one step, shared by ``attach`` and ``generate``: which argument is the base,
where a missing base comes from, and loading everything with timings."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapterctl.core.adapter.config import read_adapter_config
from adapterctl.errors import NotFoundError, UsageError
from adapterctl.io.hub_ref import HubOptions
from adapterctl.io.resolve import resolve_adapter_dir, resolve_model_dir


@dataclass(frozen=True)
class Placement:
    dtype: str = "auto"
    device_map: str | dict | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None
    quantize: str | None = None
    trust_remote_code: bool = False  # let transformers import the model repo's own code


@dataclass
class Session:
    base: object  # LoadedBase
    reports: list = field(default_factory=list)  # AttachReport per adapter
    load_seconds: float = 0.0
    attach_seconds: float = 0.0


def _is_adapter_dir(ref: str) -> bool:
    p = Path(ref).expanduser()
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def split_base_and_adapters(paths: list[str], base: str | None = None) -> tuple[str | None, list[str]]:
    """``[BASE] ADAPTER [ADAPTER...]``: the first argument is the base unless it is a local adapter
    folder (or ``--base`` was given). None as base means: take it from the adapter config."""
    if base is not None:
        return base, list(paths)
    if not paths:
        raise UsageError("give at least one adapter", hint="adapterctl attach [BASE] ADAPTER ...")
    if len(paths) == 1 or _is_adapter_dir(paths[0]):
        return None, list(paths)
    return paths[0], list(paths[1:])


def base_from_adapter(adapter_dir: Path, shown: str) -> str:
    """The base named by ``base_model_name_or_path``, as transformers does for adapter folders."""
    cfg = read_adapter_config(adapter_dir)
    if not cfg.base_model_name_or_path:
        raise NotFoundError(f"{shown}: no base model given, and adapter_config.json has no "
                            "base_model_name_or_path", hint="Pass the base model folder first.")
    return cfg.base_model_name_or_path


def adapter_names(adapters: list[str], names: list[str] | None) -> list[str]:
    """Given names, or 'default' for one adapter, or unique folder-derived names for several."""
    if names:
        if len(names) != len(adapters):
            raise UsageError(f"{len(names)} --name value(s) for {len(adapters)} adapter(s)",
                             hint="Give one --name per adapter, in order.")
        if len(set(names)) != len(names):
            raise UsageError("adapter names must be unique")
        return list(names)
    if len(adapters) == 1:
        return ["default"]
    out: list[str] = []
    for ref in adapters:
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(ref.split("@")[0]).name) or "adapter"
        name, i = stem, 2
        while name in out or name == "__base__":
            name, i = f"{stem}-{i}", i + 1
        out.append(name)
    return out


def precheck_base(base_dir: Path, shown: str, loaded: list) -> None:
    """Fail before loading the weights when an adapter names none of the base's modules (a Llama
    adapter on GPT-2). Finer checks (shapes, tied heads) run on the loaded model."""
    from adapterctl.core.adapter.compat import check_modules_present
    from adapterctl.core.adapter.problems import as_error
    from adapterctl.io.model_dir import locate_model_files, read_model_headers

    files = locate_model_files(base_dir, shown)
    if files.weights_format != "safetensors":
        return
    keys = set(read_model_headers(files))
    tied = files.config.get("tie_word_embeddings", True)  # a tied head has no weight of its own
    for la in loaded:
        problem = check_modules_present(list(la.modules), keys, tied, shown, files.model_type)
        if problem:
            raise as_error(problem, la.source)


def base_hub(hub: HubOptions | None) -> HubOptions | None:
    """The adapter's Hub settings for its base: same token, log and progress; no --revision
    (that names the adapter's revision, not the base's)."""
    return replace(hub, revision=None) if hub else None


def open_session(base_ref: str | None, adapters: list[str], names: list[str] | None = None,
                 weights: list[float] | None = None, placement: Placement = Placement(),
                 hub: HubOptions | None = None, trainable: bool = False, on_step=None) -> Session:
    """Load the base (from the first adapter's config when ``base_ref`` is None), attach all."""
    from adapterctl.core.engine.attach import attach_adapter
    from adapterctl.core.engine.model import load_base
    from adapterctl.core.lora.loaded import load_adapter

    step = on_step or (lambda text: None)
    names = adapter_names(adapters, names)
    weights = list(weights or [1.0] * len(adapters))
    if len(weights) != len(adapters):
        raise UsageError(f"{len(weights)} weight(s) for {len(adapters)} adapter(s)")
    dirs = [resolve_adapter_dir(a, hub) for a in adapters]
    loaded = [load_adapter(d, n, source=a) for d, n, a in zip(dirs, names, adapters)]
    if base_ref is None:
        base_ref = base_from_adapter(dirs[0], adapters[0])
    base_dir = resolve_model_dir(base_ref, base_hub(hub))
    precheck_base(base_dir, base_ref, loaded)
    step(f"loading base {base_ref}")
    t0 = time.perf_counter()
    lb = load_base(base_dir, placement.dtype, placement.device_map, placement.max_memory,
                   placement.offload_folder, placement.quantize,
                   hub=base_hub(hub),
                   trust_remote_code=placement.trust_remote_code)
    session = Session(lb, load_seconds=time.perf_counter() - t0)
    t1 = time.perf_counter()
    for la, w in zip(loaded, weights):
        step(f"attaching {la.source} as {la.name!r}")
        session.reports.append(attach_adapter(lb.model, la, la.name, trainable=trainable, weight=w))
    session.attach_seconds = time.perf_counter() - t1
    return session
