"""``push``: what to upload from an adapter folder or a merged model folder, validated first
(:func:`plan_push`, with the card from :mod:`adapterctl.io.folders.model_card`), and the one commit that
uploads it (:func:`push_plan`); :class:`PushReport` is the command's result.

Only the files that make the adapter (or model) are uploaded by default: PEFT's own set
(spec section 9.2: ``adapter_config.json``, ``adapter_model.safetensors`` or ``.bin``, README)
plus tokenizer files saved beside it; a model's config, weights (single or sharded), and
tokenizer. Training checkpoints and other stray files stay home unless ``--include``d.
Never imports torch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapterctl import errors as E
from adapterctl.io.folders.model_card import (
    ADAPTER,
    local_base_note,
    looks_like_model_id,
    render_card,
    split_card,
)
from adapterctl.io.formats.classify import MLX, MODEL, classify_folder
from adapterctl.io.hub.ref import HubOptions, looks_like_hub_id
from adapterctl.io.hub.upload import (
    PushResult,
    RemoteFiles,
    Upload,
    fetch_card,
    push_commit,
    remote_files,
)

TOKENIZER = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
]
ADAPTER_DEFAULT = ["adapter_config.json", "adapter_model.safetensors", *TOKENIZER]
MODEL_DEFAULT = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    *TOKENIZER,
]
CARD = "README.md"


@dataclass(frozen=True)
class PushFile:
    path_in_repo: str
    local: Path | None  # None: generated (the model card)
    size: int


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    kind: str  # "adapter" | "model"
    base_model: str | None
    files: list[PushFile]
    card: str | None
    warnings: list[str] = field(default_factory=list)
    #: what the repo holds now (None: not compared, e.g. offline); files it has are replaced
    remote: RemoteFiles = RemoteFiles(None, "the remote was not compared")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def replaces(self) -> list[dict]:
        """Each file's repo path and whether the repo has it now (None: not compared)."""
        return [{"path": f.path_in_repo, "exists": self.remote.has(f.path_in_repo)} for f in self.files]


def detect_kind(folder: Path) -> str:
    if not folder.is_dir():
        raise E.NotFoundError(
            f"{folder}: no such directory",
            hint="Give the adapter folder (adapter_config.json) or a merged model folder (config.json).",
        )
    kind = classify_folder(folder)
    if kind in (ADAPTER, MODEL):
        return kind
    if kind == MLX:
        raise E.InvalidAdapterError(
            f"{folder}: is an MLX-LM adapter folder, not a PEFT adapter",
            hint=f"Convert it first: adapterctl convert --from mlx {folder} OUT.",
        )
    raise E.NotFoundError(
        f"{folder}: neither adapter_config.json nor config.json here",
        hint="push uploads an adapter folder or a model folder written by merge.",
    )


def validate_folder(folder: Path, kind: str) -> tuple[str | None, list[str]]:
    """Refuse what cannot be used; return (base model named by the files, warnings)."""
    if kind == "model":
        from adapterctl.io.folders.model_dir import locate_model_files, read_model_headers

        files = locate_model_files(folder)
        if files.weights_format == "safetensors":
            read_model_headers(files)  # truncated or corrupt shards fail here, before any upload
        return files.config.get("_name_or_path"), []
    from adapterctl.core.adapter.inspect import inspect_adapter

    summary = inspect_adapter(folder)
    errors = [p for p in summary.problems if p.severity == "error"]
    if errors:
        listing = "; ".join(f"{p.code}: {p.message}" for p in errors)
        raise errors[0].error(
            f"{folder}: refusing to push an adapter that cannot be used: {listing}",
            hint=errors[0].hint or f"Run 'adapterctl inspect {folder}' for details.",
        )
    return summary.config.base_model, [p.message for p in summary.problems]


def select_files(folder: Path, kind: str, include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    """Default set for ``kind``, plus ``include`` globs, minus ``exclude`` globs (repo paths)."""
    defaults = ADAPTER_DEFAULT if kind == "adapter" else MODEL_DEFAULT
    if kind == "adapter" and not (folder / "adapter_model.safetensors").is_file():
        defaults = [*defaults, "adapter_model.bin"]  # legacy weights, only when nothing better
    chosen = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel == CARD or rel.startswith(".") or "/." in rel:
            continue
        picked = ("/" not in rel and any(fnmatch.fnmatchcase(rel, g) for g in defaults)) or any(
            fnmatch.fnmatchcase(rel, g) for g in include
        )
        if picked and not any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            chosen.append(check_inside(folder, p))
    return chosen


def check_inside(folder: Path, path: Path) -> Path:
    """Refuse a file that is a symlink out of ``folder``: pushing a stranger's folder must not
    publish what its links point at (``~/.cache/huggingface/token``, keys). A Hugging Face cache
    snapshot's links into its own ``blobs/`` are fine."""
    from adapterctl.io.folders.model_dir import symlink_roots

    target = path.resolve()
    if not any(target.is_relative_to(root) for root in symlink_roots(folder)):
        raise E.InvalidAdapterError(
            f"{path}: is a symlink to {target}, outside {folder}; refusing to upload it",
            hint="Copy the file into the folder if it should be published, or --exclude it.",
        )
    return path


def choose_base(
    kind: str, override: str | None, from_files: str | None, card: str | None
) -> tuple[str | None, list[str]]:
    """Base model id for the card: --base-model, else the card's, else the files' own name."""
    if override:
        return override, []
    existing = split_card(card)[0].get("base_model") if card else None
    if isinstance(existing, str) and looks_like_model_id(existing):
        return existing, []
    if looks_like_model_id(from_files):
        return from_files, []
    if from_files:
        return None, [local_base_note(from_files, "pass --base-model user/repo")]
    return None, ["no base model recorded: the card names none (pass --base-model user/repo)"]


def check_repo_id(repo_id: str) -> None:
    if not looks_like_hub_id(repo_id) or "@" in repo_id:
        raise E.UsageError(
            f"{repo_id!r} is not a Hub repo id", hint="Use user/repo (and --revision for a branch)."
        )


def plan_push(
    folder: Path,
    repo_id: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    base_model: str | None = None,
    hub: HubOptions | None = None,
    remote_card: Callable[[], str | None] | None = None,
    remote: RemoteFiles | None = None,
    compare: bool = True,
) -> PushPlan:
    """Validate ``folder`` and list what to upload, with the rendered model card.

    ``remote`` (default with ``compare``: listed with one request, never retried, see
    :func:`~adapterctl.io.hub.upload.remote_files`) says which files the push replaces; a push
    itself passes ``compare=False`` (its token is checked before any request). The card starts
    from the folder's README.md, else from ``remote_card()`` (default: the one on the Hub at
    ``hub.revision``, skipped when the listing has none), so a user's card text survives."""
    check_repo_id(repo_id)
    kind = detect_kind(folder)
    named_base, warnings = validate_folder(folder, kind)
    files = [
        PushFile(p.relative_to(folder).as_posix(), p, p.stat().st_size)
        for p in select_files(folder, kind, include, exclude)
    ]
    if not files:
        raise E.UsageError(f"{folder}: nothing to upload after --include/--exclude")
    revision = hub.revision if hub else None
    if remote is None and compare:  # usage errors first: no request for a push that cannot happen
        remote = remote_files(repo_id, revision, hub)
    if remote_card is None:
        listed = remote is None or remote.has(CARD)  # not compared: ask for the card itself
        remote_card = lambda: fetch_card(repo_id, revision, hub) if listed else None  # noqa: E731
    local_card = folder / CARD
    existing = _read_text(check_inside(folder, local_card)) if local_card.is_file() else remote_card()
    base, base_warnings = choose_base(kind, base_model, named_base, existing)
    card = None
    if not any(fnmatch.fnmatchcase(CARD, g) for g in exclude):
        card = render_card(existing, kind, base, title=repo_id)
        files.append(PushFile(CARD, None, len(card.encode())))
    remote = remote or RemoteFiles(None, "the remote was not compared")
    return PushPlan(folder, repo_id, kind, base, files, card, warnings + base_warnings, remote)


@dataclass(frozen=True)
class PushReport:
    """What ``push`` did: the plan, and the commit (None for a dry run)."""

    plan: PushPlan
    revision: str | None = None  # the branch asked for (None: main)
    commit: PushResult | None = None

    def to_dict(self) -> dict:
        plan, c = self.plan, self.commit
        files = [{"path": f.path_in_repo, "size": f.size} for f in plan.files]
        if c is None:
            return {
                "dry_run": True,
                "repo": plan.repo_id,
                "revision": self.revision or "main",
                "kind": plan.kind,
                "base_model": plan.base_model,
                "files": files,
                "total_bytes": plan.total_bytes,
                "card": plan.card,
                "replaces": plan.replaces(),
                "remote": {"compared": plan.remote.compared, "note": plan.remote.note},
            }
        return {
            "repo": c.repo_id,
            "revision": c.revision,
            "commit_id": c.commit_id,
            "commit_url": c.commit_url,
            "pr_url": c.pr_url,
            "changed": c.changed,
            "created_repo": c.created_repo,
            "created_branch": c.created_branch,
            "files": files,
        }


def default_message(plan: PushPlan) -> str:
    what = "LoRA adapter" if plan.kind == ADAPTER else "merged model"
    return f"Upload {what} with adapterctl"


def push_plan(
    plan: PushPlan,
    hub: HubOptions | None = None,
    *,
    message: str | None = None,
    private: bool = False,
    create_pr: bool = False,
) -> PushReport:
    """Upload the planned files and the card in one commit to ``plan.repo_id`` (branch
    ``hub.revision``, else main; the repo and branch are created when missing)."""
    hub = hub or HubOptions()
    uploads = [
        # the one file without a local path is the generated card
        Upload(f.path_in_repo, f.local, (plan.card or "").encode() if f.local is None else None)
        for f in plan.files
    ]
    commit = push_commit(
        plan.repo_id,
        uploads,
        hub,
        message=message or default_message(plan),
        private=private,
        create_pr=create_pr,
    )
    return PushReport(plan, hub.revision, commit)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise E.InvalidAdapterError(f"{path}: cannot read the model card ({err})") from err
