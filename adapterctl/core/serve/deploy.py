"""``adapterctl deploy / undeploy / ls``: adapters into (and out of) a server that is already running,
through the engine's runtime API, checked first (a refusal inside vLLM can kill its engine, so
nothing the engine's rules refuse is ever sent):

1. the server is asked what it serves (``/v1/models``; a server that is not there fails here) and
   its version (``/version``, where it reports one);
2. each adapter is checked and converted where exact (:func:`prepare.prepare_adapters`, as
   ``serve``), then staged: copied into ``stage`` (a folder the server can read; converted copies
   are written there directly);
3. each is loaded: vLLM ``POST /v1/load_lora_adapter {lora_name, lora_path}`` (needs
   ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, ``vllm/entrypoints/serve/lora/api_router.py``,
   0.32); SGLang ``POST /load_lora_adapter`` (same body, ``sglang/srt/entrypoints/http_server.py``);
   a name already served is refused unless ``replace`` (unload, then load);
4. ``verify`` compares the served adapters with our engine; one that is not served as trained is
   unloaded again unless ``keep_on_failure``. A load that fails unloads what this call loaded.

llama.cpp's server has no runtime load: its ``/lora-adapters`` lists the adapters given with
``--lora`` at start and sets their scales (``tools/server/README.md``); it is refused here.

Deployments are recorded in ``stage/deployments.json`` (server -> name -> the local adapter), so
``ls`` can say which local adapter a served name came from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.core.serve.client import Client, EndpointOptions
from adapterctl.core.serve.prepare import PreparedAdapter, _digest, prepare_adapters
from adapterctl.errors import EndpointError, NotFoundError, NotServedError, UnsupportedError, UsageError
from adapterctl.io.folders.output_dir import Input, write_output_dir

if TYPE_CHECKING:
    from adapterctl.core.serve.verify import VerifyReport

#: the runtime routes: (load, unload, at the server's root rather than under /v1)
ROUTES = {
    "vllm": ("/load_lora_adapter", "/unload_lora_adapter", False),
    "sglang": ("/load_lora_adapter", "/unload_lora_adapter", True),
}
STATE = "deployments.json"
_RANK = re.compile(r"rank (\d+)\D{0,40}max_lora_rank\D{0,3}(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Deployed:
    name: str
    adapter: str  # as the user gave it
    path: str  # what the server loads (the staged copy)
    verdict: str  # check's verdict for the adapter as it was
    converted: bool
    rank: int
    replaced: bool = False

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "path": self.path,
            "verdict": self.verdict,
            "converted": self.converted,
            "rank": self.rank,
            "replaced": self.replaced,
        }


class _NotServedWithReport(NotServedError):
    """NotServedError carrying the deploy report, which the CLI renders (``getattr(err, "report")``)."""

    report: DeployReport | None = None


@dataclass(frozen=True)
class DeployReport:
    endpoint: str
    engine: str
    server_version: str | None
    stage: str
    adapters: list[Deployed] = field(default_factory=list)
    verify: VerifyReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "engine": self.engine,
            "server_version": self.server_version,
            "stage": self.stage,
            "adapters": [a.to_dict() for a in self.adapters],
            "verify": self.verify.to_dict() if self.verify is not None else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ServedRow:
    name: str
    parent: str | None  # None: a base model
    root: str | None  # where the server loaded it from
    adapter: str | None = None  # the local adapter it was deployed from (state file)

    def to_dict(self) -> dict:
        return {"name": self.name, "parent": self.parent, "root": self.root, "adapter": self.adapter}


def check_runtime_engine(engine: str) -> str:
    if engine == "llama.cpp":
        raise UnsupportedError(
            "llama.cpp's server cannot load an adapter while it runs: its /lora-adapters route "
            "lists the adapters given with --lora at start and sets their scales, nothing more",
            hint="Start llama-server with --lora FILE.gguf (adapterctl convert ADAPTER OUT --to gguf), "
            "or deploy to vLLM or SGLang.",
        )
    if engine not in ROUTES:
        raise UsageError(f"deploy --engine {engine}: vllm, sglang or llama.cpp")
    return engine


def server_version(client: Client) -> str | None:
    """``/version`` (vLLM: ``{"version": ...}``); None where the server does not say."""
    try:
        doc = json.loads(client.send("GET", "/version", None, "asking its version", at_root=True))
    except (EndpointError, NotFoundError, json.JSONDecodeError):
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) else None


def served_models(client: Client) -> list:
    from adapterctl.core.serve.endpoint import list_models

    models = list_models(client)
    if models is None:
        raise EndpointError(
            f"{client.root}: the server does not list its models (/v1/models)",
            hint="deploy needs an OpenAI-compatible server that lists what it serves (vLLM, SGLang).",
        )
    return models


def server_base(models: list, base: str | None) -> str:
    """The local base the adapters are checked against: ``--base``, else the folder the server
    loaded its base from."""
    if base:
        return base
    roots = [m.root or m.id for m in models if m.parent is None]
    for root in roots:
        if Path(root).expanduser().is_dir():
            return root
    raise UsageError(
        f"the server's base ({', '.join(roots) or 'none'}) is not a folder here",
        hint="Name the base with --base (a local folder or Hub id of the model the server runs).",
    )


def deploy_adapters(
    opts: EndpointOptions,
    engine: str,
    adapters: Sequence[tuple[str, str, Path]],
    base: tuple[Path, str],
    stage: Path,
    *,
    replace_taken: bool = False,
    verify: bool = True,
    keep_on_failure: bool = False,
    models: list | None = None,
    on_step: Callable[[str], None] | None = None,
) -> DeployReport:
    """``adapters``: (served name, as given, local folder); ``base``: (local folder, as given)."""
    step = on_step or (lambda text: None)
    engine = check_runtime_engine(engine)
    client = Client(replace(opts, retries=0))  # a load is not retried: it may have half-happened
    models = models if models is not None else served_models(client)
    version = server_version(client)
    served = {m.id: m for m in models}
    _check_names(client, served, [n for n, _, _ in adapters], replace_taken)
    prepared = prepare_adapters(engine, adapters, base, stage, step)  # refusals raise here
    _check_rank(engine, prepared)
    staged = [stage_adapter(p, engine, base, stage, step) for p in prepared]
    loaded: list[Deployed] = []
    try:
        for p, path in zip(prepared, staged):
            taken = p.name in served
            if taken:
                step(f"{p.name}: already served; unloading it first (--replace)")
                _unload(client, engine, p.name)
            step(f"{p.name}: loading {path}")
            _load(client, engine, p.name, path, p.rank)
            loaded.append(Deployed(p.name, p.source, str(path), p.verdict, p.converted, p.rank, taken))
    except BaseException:
        _unload_quietly(client, engine, [d.name for d in loaded], step)
        raise
    record(stage, client.root, loaded)
    report = DeployReport(client.root, engine, version, str(stage), loaded, None, _notes(engine, version))
    if not verify:
        return report
    return _verify(opts, client, engine, report, base=base, keep_on_failure=keep_on_failure, step=step)


def _notes(engine: str, version: str | None) -> list[str]:
    rules = _rules_version(engine)
    if version and rules and version.split("+")[0] != rules:
        return [f"the server runs {engine} {version}; the rules were read from {engine} {rules}"]
    return []


def _rules_version(engine: str) -> str | None:
    import importlib

    module = importlib.import_module(f"adapterctl.core.engine_rules.{engine}")
    return getattr(module, "VERSION", None)


def _check_names(client: Client, served: dict, names: Sequence[str], replace_taken: bool) -> None:
    for name in names:
        model = served.get(name)
        if model is None:
            continue
        if model.parent is None:
            raise UsageError(f"{client.root}: {name!r} is the server's base model, not an adapter name")
        if not replace_taken:
            raise UsageError(
                f"{client.root} already serves an adapter named {name!r} (from {model.root})",
                hint="Pick another NAME, or pass --replace to unload it and load this one.",
            )


def _check_rank(engine: str, prepared: Sequence[PreparedAdapter]) -> None:
    """What the engine could never load (vLLM: a rank above its largest --max-lora-rank) is
    refused before anything is sent; the server's own limit is known only from its answer."""
    from adapterctl.core.serve.prepare import lora_limits

    lora_limits(engine, prepared)


def stage_adapter(p: PreparedAdapter, engine: str, base: tuple[Path, str], stage: Path, step) -> Path:
    """The folder the server loads: a converted copy is already in ``stage``; an adapter served
    as it is gets copied there (only its files, once per content)."""
    if p.converted:
        return Path(p.path).resolve()
    dest = stage / f"{p.name}-{_digest(Path(p.path), engine, base[0])}"
    if (dest / "adapter_config.json").is_file():
        return dest.resolve()
    step(f"{p.source}: staging into {dest}")
    stage.mkdir(parents=True, exist_ok=True)
    inputs = [Input.adapter(Path(p.path), p.source), Input.model(base[0], base[1])]
    with write_output_dir(dest, inputs=inputs, flag="--stage") as tmp:
        for f in sorted(Path(p.path).iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return dest.resolve()


def _load(client: Client, engine: str, name: str, path: Path, rank: int) -> None:
    load, _, at_root = ROUTES[engine]
    what = f"loading adapter {name!r}"
    try:
        text = client.send("POST", load, {"lora_name": name, "lora_path": str(path)}, what, at_root)
    except NotFoundError as err:
        raise EndpointError(
            f"{client.root}: the server does not load adapters while it runs ({load} not found)",
            hint="Start it with `adapterctl serve BASE --allow-runtime-lora` (vLLM: "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora).",
        ) from err
    except EndpointError as err:
        raise _load_error(err, name, rank) from err
    _check_sglang_answer(client, text, what)


def _load_error(err: EndpointError, name: str, rank: int) -> Exception:
    said = str(err)
    found = _RANK.search(said)
    if found or "max_lora_rank" in said:
        limit = found.group(2) if found else "its --max-lora-rank"
        return UnsupportedError(
            f"adapter {name!r} has rank {rank}, above the server's max_lora_rank ({limit}): {said}",
            hint=f"Restart the server with --max-lora-rank {rank} or more, or reduce the adapter "
            f"(adapterctl convert ADAPTER OUT --rank {found.group(2) if found else 'R'}).",
        )
    if "already been loaded" in said:
        return UsageError(
            f"adapter name {name!r} was taken while deploying: {said}",
            hint="Pick another NAME, or pass --replace.",
        )
    return err


def _check_sglang_answer(client: Client, text: str, what: str) -> None:
    """SGLang answers ``{"success": false, "error_message": ...}`` (sometimes with status 200)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(doc, dict) and doc.get("success") is False:
        raise EndpointError(f"{client.root}: {what} failed: {doc.get('error_message') or doc}")


def _unload(client: Client, engine: str, name: str) -> None:
    _, unload, at_root = ROUTES[engine]
    what = f"unloading adapter {name!r}"
    text = client.send("POST", unload, {"lora_name": name}, what, at_root)
    _check_sglang_answer(client, text, what)


def _unload_quietly(client: Client, engine: str, names: Sequence[str], step) -> list[str]:
    """Undo this call's loads after a failure; what cannot be unloaded is said, not raised (the
    first error is the one the user needs)."""
    done = []
    for name in names:
        try:
            _unload(client, engine, name)
            done.append(name)
            step(f"{name}: unloaded again")
        except (EndpointError, NotFoundError) as err:
            step(f"{name}: could not be unloaded ({err}); run `adapterctl undeploy` later")
    return done


def _verify(opts, client, engine, report: DeployReport, *, base, keep_on_failure, step) -> DeployReport:
    from adapterctl.core.generate.prompts import PromptSpec
    from adapterctl.core.serve.verify import DEFAULT_PROMPTS, run_verify

    specs = [PromptSpec(f"p{i}", text) for i, text in enumerate(DEFAULT_PROMPTS)]
    pairs = [(d.name, d.adapter) for d in report.adapters]
    try:
        result = run_verify(opts, pairs, specs, base_ref=base[1], on_step=step)
    except BaseException:
        if not keep_on_failure:
            _undo(client, engine, report, step)
        raise
    report = replace(report, verify=result)
    if result.ok:
        return report
    bad = [r for r in result.results if not r.ok]
    if not keep_on_failure:
        _undo(client, engine, report, step)
    from adapterctl.core.serve.verify import VERDICT_TEXT

    err = _NotServedWithReport(
        "; ".join(f"{r.name} {VERDICT_TEXT[r.verdict]}" for r in bad)
        + ("" if keep_on_failure else " (unloaded again)"),
        hint="`adapterctl verify` shows the first divergent token; --keep-on-failure keeps them loaded.",
    )
    err.report = report  # the CLI renders what was checked
    raise err


def _undo(client, engine, report: DeployReport, step) -> None:
    names = _unload_quietly(client, engine, [d.name for d in report.adapters], step)
    forget(Path(report.stage), client.root, names)


def undeploy_adapters(opts: EndpointOptions, engine: str, names: Sequence[str], stage: Path) -> list[str]:
    """Unload ``names``; each must be an adapter the server serves (checked before any unload)."""
    engine = check_runtime_engine(engine)
    client = Client(replace(opts, retries=0))
    served = {m.id: m for m in served_models(client)}
    for name in names:
        model = served.get(name)
        if model is None or model.parent is None:
            adapters = sorted(m.id for m in served.values() if m.parent is not None)
            raise NotFoundError(
                f"{client.root} serves no adapter named {name!r}",
                hint=f"It serves: {', '.join(adapters) or 'no adapters'} (`adapterctl ls --endpoint URL`).",
            )
    for name in names:
        _unload(client, engine, name)
        forget(stage, client.root, [name])
    return list(names)


def list_served(opts: EndpointOptions, stage: Path) -> list[ServedRow]:
    client = Client(opts)
    known = read_state(stage).get(client.root, {})
    rows = []
    for m in served_models(client):
        entry = known.get(m.id) if m.parent is not None else None
        same = entry and entry.get("path") == m.root
        rows.append(ServedRow(m.id, m.parent, m.root, entry["adapter"] if same and entry else None))
    return rows


# ----- the state file: which local adapter each deployed name came from -----------------------
def read_state(stage: Path) -> dict:
    path = Path(stage) / STATE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_state(stage: Path, doc: dict) -> None:
    stage.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE}.", dir=stage)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    os.replace(tmp, stage / STATE)


def record(stage: Path, server: str, deployed: Sequence[Deployed]) -> None:
    doc = read_state(stage)
    entries = doc.setdefault(server, {})
    for d in deployed:
        entries[d.name] = {"adapter": d.adapter, "path": d.path, "converted": d.converted}
    _write_state(stage, doc)


def forget(stage: Path, server: str, names: Sequence[str]) -> None:
    doc = read_state(stage)
    entries = doc.get(server, {})
    if not any(n in entries for n in names):
        return
    for name in names:
        entries.pop(name, None)
    _write_state(stage, doc)
