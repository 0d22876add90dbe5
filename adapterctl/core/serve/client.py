"""A small client for OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server, LoRAX, TGI).

Stdlib only (``urllib``): one JSON request at a time per call, safe to use from several threads.
Faults become :class:`~adapterctl.errors.EndpointError` (exit 8) or, for a model the server does
not know, :class:`~adapterctl.errors.NotFoundError` (exit 3), each naming the URL:

- 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured, capped), a bounded
  number of times; so are connections the server drops mid-answer;
- a refused connection and a timeout are not retried (the server is not there, or the request is
  too slow for ``--timeout``: retrying would only double the load);
- a body that is not a JSON object is "malformed", never a traceback;
- redirects are not followed (the ``Authorization`` header must not travel to another host); the
  API key is sent as ``Authorization: Bearer`` and never put in a message.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, overload

from adapterctl.errors import EndpointError, NotFoundError, UsageError

#: statuses worth another try: rate limited, or the server is (momentarily) failing
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: the most bytes read from one answer (a completion is kilobytes; a misbehaving server is not)
MAX_BODY = 32 * 1024 * 1024
_TRANSIENT = (
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    ConnectionResetError,
    BrokenPipeError,
)


@dataclass(frozen=True)
class EndpointOptions:
    """Where the server is and how patiently to talk to it."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 600.0  # seconds per request (connect + answer)
    retries: int = 4  # further tries after a 429/5xx or a dropped connection
    backoff: float = 0.5  # first wait in seconds, doubled after each try
    max_wait: float = 20.0  # cap on one wait, Retry-After included

    def check(self) -> None:
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be > 0 seconds, got {self.timeout}")
        api_root(self.url)


def api_root(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/v1`` -> ``.../v1``."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--endpoint {url!r} is not an http(s) URL",
            hint="Give the server's base URL, e.g. http://127.0.0.1:8000 (or .../v1).",
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def server_root(url: str) -> str:
    """``.../v1`` -> the server's root (where vLLM's ``/version`` and SGLang's routes are)."""
    root = api_root(url)
    return root[: -len("/v1")]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's
        return None  # urllib then raises HTTPError for the 3xx


class Client:
    """JSON over HTTP to one server. ``sleep`` is injectable so tests need not wait."""

    def __init__(self, opts: EndpointOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        opts.check()
        self.opts, self.root, self._sleep = opts, api_root(opts.url), sleep
        self._opener = urllib.request.build_opener(_NoRedirect)

    def get(self, path: str, what: str) -> dict:
        return self._call("GET", path, None, what)

    def post(self, path: str, body: dict, what: str) -> dict:
        return self._call("POST", path, body, what)

    def send(self, method: str, path: str, body: dict | None, what: str, at_root: bool = False) -> str:
        """A request whose answer is text, not JSON (vLLM's ``/v1/load_lora_adapter`` answers
        "Success: ..."); ``at_root``: ``path`` is under the server's root, not ``/v1`` (SGLang's
        routes, ``/version``). Faults as :meth:`get`'s."""
        root = server_root(self.root) if at_root else self.root
        return self._call(method, path, body, what, url=root + path, raw=True)

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "adapterctl",
        }
        if self.opts.api_key:
            headers["Authorization"] = f"Bearer {self.opts.api_key}"
        return headers

    @overload
    def _call(
        self,
        method: str,
        path: str,
        body: dict | None,
        what: str,
        url: str | None = None,
        raw: Literal[False] = False,
    ) -> dict: ...
    @overload
    def _call(
        self,
        method: str,
        path: str,
        body: dict | None,
        what: str,
        url: str | None = None,
        *,
        raw: Literal[True],
    ) -> str: ...
    def _call(
        self, method: str, path: str, body: dict | None, what: str, url: str | None = None, raw: bool = False
    ) -> dict | str:
        url = url or self.root + path
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.opts.retries + 1):
            last = attempt == self.opts.retries
            req = urllib.request.Request(url, data=data, method=method, headers=self._headers())
            try:
                with self._opener.open(req, timeout=self.opts.timeout) as resp:
                    answer = resp.read(MAX_BODY + 1)
                if raw:
                    return self._redact(answer[:MAX_BODY].decode("utf-8", "replace"))
                return parse_json(answer, url, what, self._redact)
            except urllib.error.HTTPError as err:
                text = self._redact(error_text(err))  # a server may echo what it was sent
                if err.code in RETRY_STATUSES and not last:
                    self._sleep(self._wait(attempt, err.headers.get("Retry-After")))
                    continue
                raise status_error(err.code, text, url, what, attempt + 1) from None
            except _TRANSIENT as err:
                if last:
                    raise EndpointError(
                        f"{url}: the server closed the connection ({what}; "
                        f"{type(err).__name__}, {attempt + 1} tries)"
                    ) from None
                self._sleep(self._wait(attempt, None))
            except TimeoutError:
                raise self._timeout(url, what) from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, _TRANSIENT) and not last:
                    self._sleep(self._wait(attempt, None))
                    continue
                raise self._unreachable(url, what, err.reason) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _redact(self, text: str) -> str:
        key = self.opts.api_key
        return text.replace(key, "***") if key else text

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = self.opts.backoff * (2**attempt)
        if retry_after:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:  # an HTTP date: keep our own backoff
                pass
        return min(wait, self.opts.max_wait)

    def _timeout(self, url: str, what: str) -> EndpointError:
        return EndpointError(
            f"{url}: no answer within {self.opts.timeout:g}s ({what})",
            hint="Raise --timeout, lower --concurrency, or check the server's load.",
        )

    def _unreachable(self, url: str, what: str, reason) -> EndpointError:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return self._timeout(url, what)
        if isinstance(reason, ConnectionRefusedError):
            return EndpointError(
                f"{url}: connection refused ({what})",
                hint="Is the server running and listening on that host and port? "
                "(`adapterctl serve` starts one.)",
            )
        return EndpointError(
            f"{url}: cannot reach the server ({what}): {reason}",
            hint="Check the --endpoint URL and the network.",
        )


def parse_json(raw: bytes, url: str, what: str, redact=lambda text: text) -> dict:
    if len(raw) > MAX_BODY:
        raise EndpointError(f"{url}: malformed response ({what}): more than {MAX_BODY} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        start = redact(raw[:120].decode("utf-8", "replace"))
        raise EndpointError(
            f"{url}: malformed response ({what}): not JSON: {start!r}",
            hint="Is --endpoint an OpenAI-compatible server?",
        ) from None
    if not isinstance(doc, dict):
        raise EndpointError(
            f"{url}: malformed response ({what}): a JSON {type(doc).__name__}, not an object",
            hint="Is --endpoint an OpenAI-compatible server?",
        )
    return doc


def error_text(err: urllib.error.HTTPError) -> str:
    """The server's own words: OpenAI's ``{"error": {"message"}}``, FastAPI's ``detail``, or the
    start of the body."""
    try:
        raw = err.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text[:300] or (err.reason or "")
    if isinstance(doc, dict):
        inner = doc.get("error", doc)
        if isinstance(inner, dict):
            for key in ("message", "detail", "error"):
                if isinstance(inner.get(key), str):
                    return inner[key][:500]
        elif isinstance(inner, str):
            return inner[:500]
        if isinstance(doc.get("detail"), str):
            return doc["detail"][:500]
    return text[:300]


def status_error(code: int, text: str, url: str, what: str, tries: int):
    said = f": {text}" if text else ""
    if code in (401, 403):
        return EndpointError(
            f"{url}: the server refused the request ({code}{said})",
            hint="Pass the server's key with --api-key or ADAPTERCTL_API_KEY.",
        )
    if code == 404:
        return NotFoundError(
            f"{url}: not found (404, {what}){said}",
            hint="Check the model/adapter name (the server's /v1/models lists "
            "them) and that --endpoint is an OpenAI-compatible server.",
        )
    if code in RETRY_STATUSES:
        return EndpointError(
            f"{url}: server error {code} after {tries} tries ({what}){said}",
            hint="The server is overloaded or failing; retry later or lower --concurrency.",
        )
    return EndpointError(f"{url}: the server refused the request ({code}, {what}){said}")
