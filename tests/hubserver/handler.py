"""Request plumbing of the local test Hub: body decoding (incl. chunked), bearer auth, fault
injection, JSON error responses with the Hub's ``X-Error-Code`` headers."""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hubserver.state import (
    BAD_TOKEN_MESSAGE,
    MAX_BODY,
    TRUNCATE,
    Commit,
    HubError,
    HubState,
    Repo,
    _not_found,
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "adapterctl-test-hub/1"
    state: HubState  # set on the subclass made by serve()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # ----- plumbing ---------------------------------------------------------------------------
    def do_GET(self): self._dispatch("GET")
    def do_HEAD(self): self._dispatch("HEAD")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = self._read_body()
        st = self.state
        with st.lock:
            st.requests.append((method, url.path, dict(self.headers)))
            fault = next((f for f in st.faults if f.times != 0 and f.method == method
                          and re.search(f.path_re, url.path)), None)
            if fault is not None and fault.times > 0:
                fault.times -= 1
        self.truncated = fault is not None and fault.status == TRUNCATE
        try:
            if fault is not None and not self.truncated:
                raise HubError(fault.status, f"injected failure {fault.status}")
            self.user = self._auth()
            from tests.hubserver.routes import route

            route(self, method, [unquote(s) for s in url.path.split("/")[1:]], url.path)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self.send_json({"error": err.message}, err.status, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(n, MAX_BODY)) if n else b""

    def _auth(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            raise HubError(401, BAD_TOKEN_MESSAGE)
        return user

    def send_json(self, doc, status: int = 200, headers: dict | None = None) -> None:
        self.send_bytes(json.dumps(doc).encode(), status,
                        {"Content-Type": "application/json", **(headers or {})})

    def send_bytes(self, data: bytes, status: int = 200, headers: dict | None = None,
                   length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and getattr(self, "truncated", False) and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])  # announced in full, cut short
            self.wfile.flush()
            self.close_connection = True
            return
        if self.command != "HEAD":
            self.wfile.write(data)
            with self.state.lock:
                self.state.bytes_sent += len(data)

    def json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"bad JSON: {err}") from err

    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # ----- access -----------------------------------------------------------------------------
    def readable(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self.user != repo.owner):
            raise _not_found(repo_id)
        return repo

    def writable(self, repo_id: str) -> Repo:
        if self.user is None:
            raise HubError(401, "You must be authenticated to write", None)
        repo = self.readable(repo_id)
        if self.user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit
