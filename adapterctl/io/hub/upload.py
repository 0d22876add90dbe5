"""Hub uploads: one commit per push, checked before anything is created, rolled back on failure.

Order (so that a push failing before its commit leaves nothing behind): token present and
accepted (``whoami``), repo looked up (created if missing), branch created if missing, head sha
read, then a single ``create_commit`` with ``parent_commit=head``. If the commit fails, a repo or
branch created by this push is deleted again. The client itself drops files whose remote oid is
unchanged and skips an empty commit; we detect that as "head did not move".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapterctl.errors import HubError
from adapterctl.io.hub.download import client_output, is_offline, make_api
from adapterctl.io.hub.errors import LOGIN_HINT, hub_call, is_network_error
from adapterctl.io.hub.ref import endpoint_of


@dataclass(frozen=True)
class Upload:
    path_in_repo: str
    local: Path | None
    content: bytes | None = None  # generated files (the card)


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit_id: str
    commit_url: str
    changed: bool
    created_repo: bool
    created_branch: bool
    pr_url: str | None = None
    files: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteFiles:
    """The files of a repo at a revision as the Hub lists them (empty: no such repo or revision
    yet); ``files`` is None when the remote was not compared, and ``note`` says why."""

    files: frozenset[str] | None
    note: str | None = None

    @property
    def compared(self) -> bool:
        return self.files is not None

    def has(self, path: str) -> bool | None:
        return None if self.files is None else path in self.files


def remote_files(repo_id: str, revision: str | None, hub) -> RemoteFiles:
    """One request, never retried: what ``repo_id`` holds at ``revision`` (default main). Offline
    (HF_HUB_OFFLINE=1) or unreachable, the answer comes at once: not compared, and why; a dry
    run goes on without the remote instead of waiting on the client's retries."""
    from huggingface_hub import errors as hf_errors

    rev = revision or "main"
    if is_offline():
        return RemoteFiles(None, f"HF_HUB_OFFLINE=1: the remote {repo_id}@{rev} was not compared")
    try:
        info = make_api(hub).model_info(repo_id, revision=rev)
    except Exception as err:  # network failures: not compared; a missing repo: nothing there yet
        if is_network_error(err):
            return RemoteFiles(
                None,
                f"cannot reach {endpoint_of(hub)} ({type(err).__name__}): the remote "
                f"{repo_id}@{rev} was not compared",
            )
        if isinstance(
            err, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError)
        ) and not isinstance(err, hf_errors.GatedRepoError):
            return RemoteFiles(frozenset())
        with hub_call(repo_id, rev, hub, "read"):
            raise
    return RemoteFiles(frozenset(s.rfilename for s in info.siblings or []))


def fetch_card(repo_id: str, revision: str | None, hub) -> str | None:
    """The README.md on the Hub, or None when the repo, revision or file does not exist yet."""
    from huggingface_hub import errors as hf_errors

    if is_offline():
        return None  # offline dry run: the card starts from the folder's README or a new one
    api = make_api(hub)
    with hub_call(repo_id, revision, hub, "read"), client_output(hub):
        try:
            path = api.hf_hub_download(repo_id, "README.md", revision=revision or "main", cache_dir=_cache())
        except (
            hf_errors.RepositoryNotFoundError,
            hf_errors.RevisionNotFoundError,
            hf_errors.EntryNotFoundError,
        ) as err:
            if isinstance(err, hf_errors.GatedRepoError):
                raise
            return None
    return Path(path).read_text(encoding="utf-8")


def _cache() -> str:
    from adapterctl.io.hub.download import cache_dir

    return str(cache_dir())


def require_token(repo_id: str, hub) -> str:
    """The token push will use (--token, HF_TOKEN, saved login); refused early if absent or bad."""
    from huggingface_hub import get_token

    if is_offline():
        raise HubError(
            f"push to {repo_id}: needs the network but HF_HUB_OFFLINE=1",
            hint="Unset HF_HUB_OFFLINE (or use --dry-run to see what would be pushed).",
        )
    token = getattr(hub, "token", None) or get_token()
    if not token:
        raise HubError("push needs a Hub token with write access, and none was found", hint=LOGIN_HINT)
    with hub_call(repo_id, None, hub, "push to"):
        make_api(hub).whoami(token=token)
    return token


def push_commit(
    repo_id: str, uploads: list[Upload], hub, *, message: str, private: bool, create_pr: bool
) -> PushResult:
    """Upload ``uploads`` to ``repo_id`` (branch ``hub.revision`` or main) in one commit."""
    from huggingface_hub import CommitOperationAdd

    token = require_token(repo_id, hub)
    api = make_api(hub)
    branch = getattr(hub, "revision", None) or "main"
    created_repo = created_branch = False
    with hub_call(repo_id, branch, hub, "push to"), client_output(hub):
        created_repo = _create_if_missing(api, repo_id, private, token, hub)
        try:
            if branch != "main" and not _branch_exists(api, repo_id, branch, token):
                api.create_branch(repo_id, branch=branch, token=token)
                created_branch = True
            head = api.repo_info(repo_id, revision=branch, token=token).sha
            ops = [
                CommitOperationAdd(
                    path_in_repo=u.path_in_repo,
                    path_or_fileobj=_source(u),
                )
                for u in uploads
            ]
            info = api.create_commit(
                repo_id,
                ops,
                commit_message=message,
                revision=branch,
                create_pr=create_pr,
                parent_commit=head,
                token=token,
            )
        except BaseException:
            _roll_back(api, repo_id, branch, created_repo, created_branch, token)
            raise
    changed = info.oid != head
    return PushResult(
        repo_id,
        branch,
        info.oid,
        info.commit_url,
        changed,
        created_repo,
        created_branch,
        info.pr_url if create_pr and changed else None,
    )


def _source(u: Upload) -> str | bytes:
    """What the Hub client uploads for ``u``: its local file, else its generated content."""
    if u.local is not None:
        return str(u.local)
    if u.content is None:
        raise ValueError(f"{u.path_in_repo}: an Upload needs a local file or content")
    return u.content


def _create_if_missing(api, repo_id: str, private: bool, token: str, hub) -> bool:
    """True only when this push created the repo (so only then may a failure delete it)."""
    from huggingface_hub.errors import HfHubHTTPError

    if api.repo_exists(repo_id, token=token):
        if private:
            log = getattr(hub, "log", None)
            if log is not None:
                log(f"{repo_id} exists: --private only applies when push creates the repo")
        return False
    try:
        api.create_repo(repo_id, private=private, token=token)
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code != 409:
            raise
        return False  # exists after all (hidden from us, or created meanwhile): not ours to delete
    return True


def _branch_exists(api, repo_id: str, branch: str, token: str) -> bool:
    refs = api.list_repo_refs(repo_id, token=token)
    return any(b.name == branch for b in refs.branches) or branch.startswith("refs/")


def _roll_back(api, repo_id: str, branch: str, created_repo: bool, created_branch: bool, token: str) -> None:
    """Undo what this push created; best effort, the original error is what the user sees."""
    try:
        if created_repo:
            api.delete_repo(repo_id, token=token, missing_ok=True)
        elif created_branch:
            api.delete_branch(repo_id, branch=branch, token=token)
    except Exception:  # noqa: BLE001 - never mask the failure that made us roll back
        pass
