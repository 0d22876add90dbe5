"""huggingface_hub exceptions translated into ours, at the one boundary where we call the client.

Not-found kinds (repo, revision, file) exit 3 (:class:`NotFoundError`); everything else about the
Hub (gated, token missing or refused, no write access, network, server errors) exits 8
(:class:`HubError`). A token never appears in a message: every text that leaves here is scrubbed.
"""

from __future__ import annotations

import contextlib
import os

from adapterctl.errors import AdapterctlError, HubError, NotFoundError, UsageError
from adapterctl.io.hub.ref import endpoint_of

LOGIN_HINT = "Log in with `hf auth login`, or pass --token / set HF_TOKEN."


def _tokens(hub) -> list[str]:
    found = [getattr(hub, "token", None), os.environ.get("HF_TOKEN")]
    with contextlib.suppress(Exception):
        from huggingface_hub import get_token

        found.append(get_token())
    return [t for t in found if t]


def redact(text: str, hub) -> str:
    for token in _tokens(hub):
        text = text.replace(token, "***")
    return text


def _scrubbed(err: AdapterctlError, hub) -> AdapterctlError:
    err.message = redact(err.message, hub)
    err.hint = redact(err.hint, hub) if err.hint else err.hint
    err.args = (err.message,)
    return err


def offline_error(repo_id: str, revision: str, what: str) -> NotFoundError:
    return NotFoundError(
        f"{repo_id}@{revision}: {what} is not in the local Hugging Face cache "
        "(offline: HF_HUB_OFFLINE=1 or the Hub unreachable)",
        hint="Run the command once online to fill the cache, or unset HF_HUB_OFFLINE.",
    )


@contextlib.contextmanager
def hub_call(repo_id: str, revision: str | None, hub, action: str):
    """Run Hub calls for ``repo_id``; re-raise any client failure as one of ours."""
    try:
        yield
    except AdapterctlError as err:
        raise _scrubbed(err, hub) from None  # the original may quote a token
    except Exception as err:  # translated below; anything unknown stays a bug (exit 1)
        # the client wraps some failures (LFS uploads: RuntimeError from the HTTP error)
        for cause in _chain(err):
            ours = translate(cause, repo_id, revision, hub, action)
            if ours is not None:
                raise _scrubbed(ours, hub) from err
        raise


def _chain(err: BaseException | None):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def translate(
    err: BaseException, repo_id: str, revision: str | None, hub, action: str
) -> AdapterctlError | None:
    from huggingface_hub import errors as hf_errors

    rev = revision or "main"
    endpoint = endpoint_of(hub)
    if isinstance(err, hf_errors.HFValidationError):
        return UsageError(
            f"{repo_id}: not a valid Hub repo id or revision ({_first_line(err)})",
            hint="A Hub id is user/repo, letters, digits, '-', '_' and '.' "
            "(no '--' or '..'); a local folder must exist.",
        )
    if isinstance(err, hf_errors.GatedRepoError):
        return HubError(
            f"{repo_id}: gated repo; your account has not been granted access",
            hint=f"Request access on {endpoint}/{repo_id}. {LOGIN_HINT}",
        )
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return NotFoundError(
            f"{repo_id}: no such repo on {endpoint} (or it is private and your token cannot see it)",
            hint=f"Check the id (user/repo). For a private repo: {LOGIN_HINT}",
        )
    if isinstance(err, hf_errors.RevisionNotFoundError):
        return NotFoundError(
            f"{repo_id}: no revision {rev!r}",
            hint="Check the branch, tag or commit (--revision or user/repo@rev).",
        )
    if isinstance(err, hf_errors.LocalEntryNotFoundError):
        return NotFoundError(
            f"{repo_id}@{rev}: not in the local cache and the Hub was not asked (offline)",
            hint="Run once online, or unset HF_HUB_OFFLINE.",
        )
    if isinstance(err, hf_errors.EntryNotFoundError):
        return NotFoundError(
            f"{repo_id}@{rev}: file not found in the repo ({_first_line(err)})",
            hint="Check the id and revision.",
        )
    if isinstance(err, hf_errors.OfflineModeIsEnabled):
        return HubError(
            f"{repo_id}@{rev}: needs the Hub but HF_HUB_OFFLINE=1",
            hint="Unset HF_HUB_OFFLINE, or run once online to fill the cache.",
        )
    if isinstance(err, hf_errors.LocalTokenNotFoundError):
        return HubError(f"{action} {repo_id}: no Hub token found", hint=LOGIN_HINT)
    if isinstance(err, hf_errors.HfHubHTTPError):
        return _http_error(err, repo_id, rev, endpoint, action)
    if is_network_error(err) and not _never_connected(err):
        return HubError(
            f"{action} {repo_id}: the connection to {endpoint} broke off "
            f"({type(err).__name__}); a partial download is never used",
            hint="Try again; huggingface_hub resumes or restarts the file.",
        )
    if is_network_error(err):
        return HubError(
            f"cannot reach the Hub at {endpoint}: {type(err).__name__}",
            hint="Check your network and HF_ENDPOINT; HF_HUB_OFFLINE=1 uses the local cache only.",
        )
    return None


def _http_error(err, repo_id: str, rev: str, endpoint: str, action: str) -> AdapterctlError:
    status = err.response.status_code if err.response is not None else None
    detail = _first_line(err)
    if status == 401:
        return HubError(
            f"{action} {repo_id}: the Hub refused the token (401: missing or invalid)", hint=LOGIN_HINT
        )
    if status == 403:
        return HubError(
            f"{action} {repo_id}: no write access (403): {detail}",
            hint="Use a token with write permission for this namespace, or push to your own user/repo.",
        )
    url = _request_url(err)
    if status == 400 and "/api/validate-yaml" in url:
        return HubError(
            f"{action} {repo_id}: the Hub refused the model card metadata: {detail}",
            hint="Fix the YAML front matter of README.md (or --exclude README.md).",
        )
    if status is not None and status >= 500:
        return HubError(
            f"{action} {repo_id}: the Hub at {endpoint} failed with HTTP {status} (a server error)",
            hint="huggingface_hub already retried where retrying is safe; the Hub may "
            "be down or overloaded: try again later.",
        )
    return HubError(
        f"{action} {repo_id}: the Hub answered HTTP {status}: {detail}",
        hint="Check the id, revision and options.",
    )


_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


def is_network_error(err: BaseException) -> bool:
    """A transport failure (no HTTP answer): connection refused, DNS, timeout, reset.

    Checked by the exception's home module so it holds for every HTTP stack huggingface_hub has
    used (requests, httpx, httpx2); HTTP status errors are HfHubHTTPError and handled before."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, HfHubHTTPError) or isinstance(err, OfflineModeIsEnabled):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(k.__module__.split(".")[0] in _TRANSPORT_MODULES for k in type(err).__mro__)


def _never_connected(err: BaseException) -> bool:
    """Connection refused, DNS, connect/read timeouts: versus a transfer cut short midway."""
    name = type(err).__name__
    return isinstance(err, (ConnectionRefusedError, TimeoutError)) or "Connect" in name or "Timeout" in name


def _request_url(err) -> str:
    try:  # httpx raises when a response carries no request
        return str(err.response.request.url)
    except (AttributeError, RuntimeError):
        return ""


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(err).__name__
