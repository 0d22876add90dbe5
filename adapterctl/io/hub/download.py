"""Hub downloads through huggingface_hub: only the files a command needs, into the standard cache.

Facts this relies on are in ``shared/spec/hub-protocol.md``. Everything is read at call time
(``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE``) and passed explicitly to our own
``HfApi(endpoint=..., token=...)``, because huggingface_hub reads most variables once, at import.

Header-only downloads (``inspect``): the config comes into the cache as usual, and each safetensors
file is represented by a *header stub* in ``$HF_HOME/adapterctl/headers/<repo>/<sha>/``: the real
8-byte length and JSON header (read with HTTP Range by ``parse_safetensors_file_metadata``), in a
sparse file of the real length, so the header readers in :mod:`adapterctl.io.safetensors.header`
work unchanged and no weight byte crosses the network. Stub folders hold a ``HEADER_ONLY`` marker
and are only ever returned to callers that asked for headers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

from adapterctl.errors import HubError, NotFoundError, UsageError
from adapterctl.io.hub.errors import hub_call, is_network_error, offline_error
from adapterctl.io.hub.ref import endpoint_of, split_revision

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_META = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
MODEL_WEIGHTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
HEADER_MARKER = "HEADER_ONLY"
_TRUE = {"1", "ON", "YES", "TRUE"}


# ----- settings read at call time ----------------------------------------------------------------
def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def headers_dir() -> Path:
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME") or constants.HF_HOME
    return Path(home).expanduser() / "adapterctl" / "headers"


def is_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.upper() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def make_api(hub):
    from huggingface_hub import HfApi

    return HfApi(
        endpoint=endpoint_of(hub), token=getattr(hub, "token", None) or None, library_name="adapterctl"
    )


def _log(hub, text: str) -> None:
    log = getattr(hub, "log", None)
    if log is not None:
        log(text)


@contextlib.contextmanager
def client_output(hub):
    """huggingface_hub's own per-file bars and warnings (stderr); both off with --quiet."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        logging,
    )

    was_disabled, level = are_progress_bars_disabled(), logging.get_verbosity()
    if not getattr(hub, "progress", True):
        disable_progress_bars()
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if not was_disabled:
            enable_progress_bars()


def split_ref(ref: str, hub) -> tuple[str, str]:

    repo_id, revision = split_revision(ref, getattr(hub, "revision", None))
    revision = revision or "main"
    # git forbids '..' in ref names; refusing it also keeps refs/<revision> inside the cache
    if ".." in revision or revision.startswith("/") or "\\" in revision:
        raise UsageError(
            f"{repo_id}: {revision!r} is not a valid revision", hint="Give a branch, tag or commit sha."
        )
    return repo_id, revision


# ----- public entry points -----------------------------------------------------------------------
def download_adapter(repo: str, hub, need_weights: bool = True, header_only: bool = False) -> Path:
    """A local folder with ``adapter_config.json`` and, when asked, the weights (or header stubs)."""
    repo_id, revision = split_ref(repo, hub)
    want = "full" if need_weights else ("header" if header_only else "none")
    with hub_call(repo_id, revision, hub, "download"), client_output(hub):
        snap = _online_or_cached(
            repo_id,
            revision,
            hub,
            lambda: _fetch_adapter(repo_id, revision, hub, want),
            lambda: _cached_adapter(repo_id, revision, want),
        )
    return snap


def download_model(repo: str, hub, need_weights: bool = True, header_only: bool = False) -> Path:
    """A local folder with the base's config, tokenizer and, when asked, weights (or header stubs)."""
    repo_id, revision = split_ref(repo, hub)
    want = "full" if need_weights else ("header" if header_only else "none")
    with hub_call(repo_id, revision, hub, "download"), client_output(hub):
        return _online_or_cached(
            repo_id,
            revision,
            hub,
            lambda: _fetch_model(repo_id, revision, hub, want),
            lambda: _cached_model(repo_id, revision, want),
        )


def _online_or_cached(repo_id: str, revision: str, hub, online, cached) -> Path:
    if is_offline():
        folder = cached()
        _log(hub, f"HF_HUB_OFFLINE=1: using the cached copy of {repo_id}@{revision} ({folder.name[:12]})")
        return folder
    try:
        return online()
    except Exception as err:  # only network failures fall back; the rest propagate
        if not _is_connection_error(err):
            raise
        try:
            folder = cached()
        except NotFoundError:
            raise err from None
        _log(hub, f"cannot reach {endpoint_of(hub)}: using the cached copy of {repo_id}@{revision}")
        return folder


def _is_connection_error(err: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(err, OfflineModeIsEnabled) or is_network_error(err)


# ----- online ------------------------------------------------------------------------------------
def _repo_files(repo_id: str, revision: str, hub) -> tuple[str, set[str]]:
    """(commit sha, file names) of ``revision``: everything after this is fetched by that sha,
    so a branch moving meanwhile cannot mix two commits."""
    info = make_api(hub).model_info(repo_id, revision=revision)
    if info.sha is None:  # the files are fetched by commit: without one nothing is consistent
        raise HubError(
            f"{repo_id}@{revision}: the Hub did not say which commit it is",
            hint="Retry, or give a commit sha with --revision.",
        )
    _remember_ref(repo_id, revision, info.sha)
    return info.sha, {s.rfilename for s in info.siblings or []}


def _remember_ref(repo_id: str, revision: str, sha: str) -> None:
    """Record ``revision -> sha`` as the cache's ``refs/<revision>`` file (the layout
    huggingface_hub documents and reads offline), since we download by sha."""
    if revision == sha:
        return
    ref = cache_dir() / ("models--" + repo_id.replace("/", "--")) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".adapterctl-tmp")
    tmp.write_text(sha)
    tmp.replace(ref)


def _download(repo_id: str, sha: str, filename: str, hub) -> Path:
    return Path(make_api(hub).hf_hub_download(repo_id, filename, revision=sha, cache_dir=cache_dir()))


def _fetch_adapter(repo_id: str, revision: str, hub, want: str) -> Path:
    sha, files = _repo_files(repo_id, revision, hub)
    if ADAPTER_CONFIG not in files:
        raise NotFoundError(
            f"{repo_id}@{revision}: the repo has no {ADAPTER_CONFIG}",
            hint="Is it a full model rather than a LoRA adapter? Check the id.",
        )
    snap = _download(repo_id, sha, ADAPTER_CONFIG, hub).parent
    weights = next((w for w in ADAPTER_WEIGHTS if w in files), None)
    if weights is None or want == "none" or (snap / weights).is_file():
        return snap
    if want == "full":
        _download(repo_id, sha, weights, hub)
        return snap
    stub = _stub_folder(repo_id, sha)
    _copy_in(snap / ADAPTER_CONFIG, stub)
    _write_stub(make_api(hub), repo_id, sha, weights, stub)
    return _seal(stub)


def _model_weight_files(repo_id: str, sha: str, files: set[str], hub) -> list[str]:
    for index, single in MODEL_WEIGHTS:
        if index in files:
            doc = json.loads(_download(repo_id, sha, index, hub).read_text(encoding="utf-8"))
            shards = sorted({s for s in (doc.get("weight_map") or {}).values() if _plain(s)})
            return [index, *shards]
        if single in files:
            return [single]
    return []


def _fetch_model(repo_id: str, revision: str, hub, want: str) -> Path:
    sha, files = _repo_files(repo_id, revision, hub)
    if "config.json" not in files:
        raise NotFoundError(
            f"{repo_id}@{revision}: the repo has no config.json",
            hint="Is it an adapter rather than a base model? Check the id.",
        )
    # the tokenizer only matters to commands that run the model
    meta = [f for f in (*MODEL_META, *(TOKENIZER_FILES if want == "full" else ())) if f in files]
    # a repo's own model code (auto_map) is fetched, never run, unless --trust-remote-code
    meta += sorted(f for f in files if want == "full" and f.endswith(".py") and _plain(f))
    snap = _download(repo_id, sha, "config.json", hub).parent
    for f in meta[1:]:
        _download(repo_id, sha, f, hub)
    weights = _model_weight_files(repo_id, sha, files, hub) if want != "none" else []
    missing = [w for w in weights if not (snap / w).is_file()]
    if want == "full" or not missing:
        for w in missing:
            _download(repo_id, sha, w, hub)
        return snap
    stub = _stub_folder(repo_id, sha)
    for f in (*meta, *[w for w in weights if w.endswith(".json")]):
        _copy_in(snap / f, stub)
    api = make_api(hub)
    for w in weights:
        if not w.endswith(".json"):
            _write_stub(api, repo_id, sha, w, stub)
    return _seal(stub)


def _plain(name: object) -> bool:
    """A shard name inside the repo root (an index must not send us elsewhere)."""
    return (
        isinstance(name, str)
        and bool(name)
        and "/" not in name
        and "\\" not in name
        and name not in (".", "..")
    )


def _write_stub(api, repo_id: str, sha: str, filename: str, folder: Path) -> None:
    if filename.endswith(".safetensors"):
        write_header_stub(api, repo_id, sha, filename, folder / filename)
    else:  # legacy pickle: header readers never open it (inspect only reports it as .bin)
        (folder / filename).write_bytes(b"")


def write_header_stub(api, repo_id: str, sha: str, filename: str, dest: Path) -> None:
    """Write ``dest``: the file's real header in a sparse file of the file's data length.

    ``parse_safetensors_file_metadata`` reads only the header with HTTP Range requests; the data
    length is the largest end offset, which is what a safetensors writer leaves behind."""
    meta = api.parse_safetensors_file_metadata(repo_id, filename, revision=sha)
    header: dict = {}
    if meta.metadata:
        header["__metadata__"] = dict(meta.metadata)
    for name, t in meta.tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    data_len = max((t.data_offsets[1] for t in meta.tensors.values()), default=0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + data_len)  # sparse: no data bytes are stored or fetched
    tmp.replace(dest)


def _stub_folder(repo_id: str, sha: str) -> Path:
    folder = headers_dir() / ("models--" + repo_id.replace("/", "--")) / sha
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _copy_in(src: Path, folder: Path) -> None:
    dest = folder / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _seal(folder: Path) -> Path:
    (folder / HEADER_MARKER).write_text(
        "Safetensors headers only (sparse files, no weights). "
        "Written by adapterctl inspect; safe to delete.\n"
    )
    return folder


# ----- cache only (offline, or network down) -----------------------------------------------------
def _cached_config(repo_id: str, revision: str, filename: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir(), revision=revision)
    if not isinstance(found, str):
        raise offline_error(repo_id, revision, filename)
    return Path(found).parent


def _cached_adapter(repo_id: str, revision: str, want: str) -> Path:
    snap = _cached_config(repo_id, revision, ADAPTER_CONFIG)
    if want == "none" or any((snap / w).is_file() for w in ADAPTER_WEIGHTS):
        return snap
    stub = headers_dir() / ("models--" + repo_id.replace("/", "--")) / snap.name
    if want == "header" and (stub / HEADER_MARKER).is_file():
        return stub
    raise offline_error(repo_id, revision, ADAPTER_WEIGHTS[0])


def _cached_model(repo_id: str, revision: str, want: str) -> Path:
    snap = _cached_config(repo_id, revision, "config.json")
    if want == "none":
        return snap
    for index, single in MODEL_WEIGHTS:
        if (snap / index).is_file():
            doc = json.loads((snap / index).read_text(encoding="utf-8"))
            missing = [s for s in set((doc.get("weight_map") or {}).values()) if not (snap / s).is_file()]
            if not missing:
                return snap
            break
        if (snap / single).is_file():
            return snap
    stub = headers_dir() / ("models--" + repo_id.replace("/", "--")) / snap.name
    if want == "header" and (stub / HEADER_MARKER).is_file():
        return stub
    raise offline_error(repo_id, revision, "model weights")
