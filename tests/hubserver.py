"""A small local Hugging Face Hub for tests (stdlib ``http.server`` only, 127.0.0.1 only).

Implements what the real ``huggingface_hub`` 2.x client uses to create repos, upload (preupload,
LFS batch + basic PUT + verify, NDJSON commit), download (resolve HEAD/GET with Range), and read
repo info, trees, refs and branches, with the Hub's error headers (``X-Error-Code``), following
``shared/spec/hub-protocol.md`` section 3. Writes need ``Authorization: Bearer <token>`` of the
repo's owner. ``HubState.faults`` injects server errors; ``HubState.requests`` logs every call so
tests can assert what was (not) transferred. Written from the spec; no code copied.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                ".gguf", ".npy", ".zip", ".model")
MAX_BODY = 256 * 1024 * 1024  # bounded: tests never upload more than a few MB
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
BAD_TOKEN_MESSAGE = "Invalid credentials in Authorization header"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= 10 * 1024 * 1024 or b"\0" in data[:512]


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_sha1(self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": git_sha1(self.data), "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(self.data).hexdigest(), "size": len(self.data),
                            "pointerSize": 134}
        return entry


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    title: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # name (or refs/pr/N) -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    prs: int = 0

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(sha) if sha else None


@dataclass
class Fault:
    method: str
    path_re: str
    status: int
    times: int  # how many requests still fail; -1: forever


@dataclass
class HubState:
    tokens: dict[str, str]  # token -> user
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, headers)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    counter: int = 0
    bytes_sent: int = 0  # response body bytes, for tests and benchmarks of what crossed the wire

    def new_sha(self) -> str:
        self.counter += 1
        return hashlib.sha1(f"commit-{self.counter}-{time.time_ns()}".encode()).hexdigest()

    def create(self, repo_id: str, private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private=private, gated=gated)
            sha = self.new_sha()
            repo.commits[sha] = Commit(sha, {".gitattributes": Blob(GITATTRIBUTES, False)},
                                       "initial commit", None)
            repo.branches["main"] = sha
            self.repos[repo_id] = repo
            return repo

    def fail(self, method: str, path_re: str, status: int = 500, times: int = -1) -> None:
        """Make requests matching ``method`` and the regex ``path_re`` answer ``status``."""
        self.faults.append(Fault(method, path_re, status, times))

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.requests if method is None or m == method]

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository {repo_id} not found", "RepoNotFound")


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
        try:
            if fault is not None:
                raise HubError(fault.status, f"injected failure {fault.status}")
            self.user = self._auth()
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


def route(h: Handler, method: str, seg: list[str], raw_path: str) -> None:
    if seg[:1] == ["api"]:
        return _route_api(h, method, seg[1:])
    if seg[:1] == ["_lfs"] and len(seg) >= 2:
        return _lfs_object(h, method, seg[1], seg[2:] == ["verify"])
    if len(seg) >= 4 and seg[2] == "resolve":
        # the file path keeps its slashes; each segment was quoted separately
        return _resolve(h, method, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
    if len(seg) >= 2 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
        return _lfs_batch(h, f"{seg[0]}/{seg[1][:-4]}")
    raise HubError(404, f"no route for {method} {raw_path}")


def _route_api(h: Handler, method: str, seg: list[str]) -> None:
    st = h.state
    if seg == ["whoami-v2"] and method == "GET":
        if h.user is None:
            raise HubError(401, BAD_TOKEN_MESSAGE)
        return h.send_json({"type": "user", "name": h.user, "orgs": [],
                            "auth": {"accessToken": {"role": "write"}}})
    if seg == ["validate-yaml"] and method == "POST":
        content = h.json_body().get("content", "")
        if "INVALID-YAML" in content:
            return h.send_json({"errors": [{"message": "bad metadata"}]}, 400)
        return h.send_json({"errors": [], "warnings": []})
    if seg == ["repos", "create"] and method == "POST":
        return _create_repo(h)
    if seg == ["repos", "delete"] and method == "DELETE":
        doc = h.json_body()
        repo_id = f"{doc.get('organization') or h.user}/{doc['name']}"
        h.writable(repo_id)
        with st.lock:
            del st.repos[repo_id]
        return h.send_json({})
    if len(seg) < 3 or seg[0] != "models":
        raise HubError(404, f"no route for /api/{'/'.join(seg)}")
    repo_id, rest = f"{seg[1]}/{seg[2]}", seg[3:]
    with st.lock:
        return _route_repo(h, method, repo_id, rest)


def _route_repo(h: Handler, method: str, repo_id: str, rest: list[str]) -> None:
    if method == "GET" and (not rest or rest[0] == "revision"):
        repo = h.readable(repo_id)
        commit = h.commit_of(repo, rest[1] if rest else "main")
        return h.send_json(_repo_info(repo, commit, h.query.get("blobs") == ["true"]))
    if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
        repo = h.readable(repo_id)
        return _tree(h, repo, h.commit_of(repo, rest[1]), "/".join(rest[2:]))
    if method == "GET" and rest == ["refs"]:
        repo = h.readable(repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in repo.branches.items() if not n.startswith("refs/")]
        doc = {"branches": branches, "converts": [], "tags": []}
        if h.query.get("include_prs") == ["1"]:
            doc["pullRequests"] = [{"name": n, "ref": n, "targetCommit": s}
                                   for n, s in repo.branches.items() if n.startswith("refs/pr/")]
        return h.send_json(doc)
    if method == "POST" and rest[:1] == ["paths-info"]:
        repo = h.readable(repo_id)
        commit = h.commit_of(repo, rest[1])
        wanted = parse_qs(h.body.decode()).get("paths", [])
        return h.send_json([b.tree_entry(p) for p, b in commit.files.items() if p in wanted])
    if method == "POST" and rest[:1] == ["preupload"]:
        repo = h.writable(repo_id)
        return _preupload(h, repo, rest[1])
    if method == "POST" and rest[:1] == ["commit"]:
        repo = h.writable(repo_id)
        return _commit(h, repo, "/".join(rest[1:]))
    if rest[:1] == ["branch"] and len(rest) >= 2:
        repo = h.writable(repo_id)
        return _branch(h, repo, method, "/".join(rest[1:]))
    raise HubError(404, f"no route for {method} /api/models/{repo_id}/{'/'.join(rest)}")


def _create_repo(h: Handler) -> None:
    if h.user is None:
        raise HubError(401, "You must be authenticated to create a repo")
    doc = h.json_body()
    owner = doc.get("organization") or h.user
    repo_id = f"{owner}/{doc['name']}"
    url = f"{h.base_url()}/{repo_id}"
    if owner != h.user:
        raise HubError(403, f"You don't have the rights to create a repo under {owner}")
    with h.state.lock:
        if repo_id in h.state.repos:
            return h.send_json({"error": "You already created this model repo", "url": url}, 409)
        private = doc.get("private") or doc.get("visibility") == "private"
        h.state.create(repo_id, private=bool(private))
    h.send_json({"url": url, "name": repo_id, "id": repo_id})


def _repo_info(repo: Repo, commit: Commit, blobs: bool) -> dict:
    siblings = []
    for path, blob in sorted(commit.files.items()):
        s: dict = {"rfilename": path}
        if blobs:
            s.update(size=len(blob.data), blobId=git_sha1(blob.data))
            if blob.lfs:
                s["lfs"] = {"sha256": blob.etag, "size": len(blob.data), "pointerSize": 134}
        siblings.append(s)
    return {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.owner, "sha": commit.sha,
            "private": repo.private, "gated": "auto" if repo.gated else False, "disabled": False,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "tags": [], "downloads": 0, "likes": 0, "siblings": siblings}


def _tree(h: Handler, repo: Repo, commit: Commit, prefix: str) -> None:
    recursive = h.query.get("recursive") == ["true"]
    base = prefix + "/" if prefix else ""
    entries, dirs = [], set()
    for path, blob in sorted(commit.files.items()):
        if not path.startswith(base):
            continue
        rel = path[len(base):]
        if "/" in rel:
            parts = rel.split("/")
            for i in range(1, len(parts) if recursive else 2):
                dirs.add(base + "/".join(parts[:i]))
            if not recursive:
                continue
        entries.append(blob.tree_entry(path))
    if prefix and not entries and not dirs:
        raise HubError(404, f"{prefix} does not exist", "EntryNotFound",
                       {"X-Repo-Commit": commit.sha})
    entries += [{"type": "directory", "oid": git_sha1(d.encode()), "size": 0, "path": d}
                for d in sorted(dirs)]
    h.send_json(entries)


def _preupload(h: Handler, repo: Repo, rev: str) -> None:
    commit = repo.resolve(rev) if h.query.get("create_pr") != ["1"] else repo.resolve("main")
    files = []
    for f in h.json_body().get("files", []):
        sample = base64.b64decode(f.get("sample", ""))
        lfs = is_lfs(f["path"], sample) or f.get("size", 0) >= 10 * 1024 * 1024
        existing = commit.files.get(f["path"]) if commit else None
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                      "shouldIgnore": False, "oid": existing.etag if existing else None})
    h.send_json({"files": files, "commitOid": commit.sha if commit else None})


def _lfs_batch(h: Handler, repo_id: str) -> None:
    with h.state.lock:
        h.writable(repo_id)
    doc = h.json_body()
    objects = []
    for obj in doc.get("objects", []):
        out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if obj["oid"] not in h.state.lfs:
            href = f"{h.base_url()}/_lfs/{obj['oid']}"
            out["actions"] = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
        objects.append(out)
    h.send_bytes(json.dumps({"transfer": "basic", "objects": objects}).encode(), 200,
                 {"Content-Type": "application/vnd.git-lfs+json"})


def _lfs_object(h: Handler, method: str, oid: str, verify: bool) -> None:
    if method == "PUT" and not verify:
        if "Authorization" in h.headers:
            raise HubError(400, "LFS PUT must not carry the Hub token")
        if hashlib.sha256(h.body).hexdigest() != oid:
            raise HubError(400, "sha256 mismatch")
        with h.state.lock:
            h.state.lfs[oid] = h.body
        return h.send_bytes(b"", 200, {"ETag": f'"{oid}"'})
    if method == "POST" and verify:
        if h.user is None:
            raise HubError(401, "verify needs auth")
        if oid not in h.state.lfs:
            raise HubError(404, f"object {oid} was never uploaded")
        return h.send_json({})
    raise HubError(405, "method not allowed")


def _commit(h: Handler, repo: Repo, rev: str) -> None:
    create_pr = h.query.get("create_pr") == ["1"]
    base = h.commit_of(repo, "main" if create_pr else rev)
    files, title, parent = dict(base.files), "", None
    for line in h.body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            title, parent = value.get("summary", ""), value.get("parentCommit")
        elif key == "file":
            data = base64.b64decode(value["content"])
            files[value["path"]] = Blob(data, is_lfs(value["path"], data))
        elif key == "lfsFile":
            if value["oid"] not in h.state.lfs:
                raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
            files[value["path"]] = Blob(h.state.lfs[value["oid"]], True)
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
    if parent and parent != base.sha:
        raise HubError(412, "A commit has happened since. Please refresh and try again.")
    sha = h.state.new_sha()
    repo.commits[sha] = Commit(sha, files, title, base.sha)
    pr_url = None
    if create_pr:
        repo.prs += 1
        repo.branches[f"refs/pr/{repo.prs}"] = sha
        pr_url = f"{h.base_url()}/{repo.repo_id}/discussions/{repo.prs}"
    else:
        repo.branches[rev] = sha
    h.send_json({"success": True, "commitOid": sha, "commitUrl": f"{h.base_url()}/{repo.repo_id}/commit/{sha}",
                 "hookOutput": "", "pullRequestUrl": pr_url})


def _branch(h: Handler, repo: Repo, method: str, name: str) -> None:
    if method == "POST":
        if name in repo.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        start = h.json_body().get("startingPoint") or "main"
        repo.branches[name] = h.commit_of(repo, start).sha
        return h.send_json({})
    if method == "DELETE":
        if name not in repo.branches or name == "main":
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        del repo.branches[name]
        return h.send_json({})
    raise HubError(405, "method not allowed")


def _resolve(h: Handler, method: str, repo_id: str, rev: str, path: str) -> None:
    with h.state.lock:
        repo = h.readable(repo_id)
        if repo.gated and h.user != repo.owner:  # nobody else has been granted access
            raise HubError(403, f"Access to model {repo_id} is restricted", "GatedRepo")
        commit = h.commit_of(repo, rev)
        blob = commit.files.get(path)
    if blob is None:
        raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
    data, size = blob.data, len(blob.data)
    headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if blob.lfs:
        headers.update({"X-Linked-Etag": f'"{blob.etag}"', "X-Linked-Size": size})
    rng = h.headers.get("Range") or h.headers.get("range")
    if method == "GET" and rng:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not m:
            raise HubError(416, f"bad range {rng}")
        start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        if start >= size:
            raise HubError(416, "range past end", headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return h.send_bytes(data[start:end + 1], 206, headers)
    h.send_bytes(data, 200, headers, length=size)


@dataclass
class RunningHub:
    server: ThreadingHTTPServer
    state: HubState
    thread: threading.Thread

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(tokens: dict[str, str]) -> RunningHub:
    """Start a hub on 127.0.0.1 and an ephemeral port, in a daemon thread."""
    state = HubState(tokens=dict(tokens))
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-hub", daemon=True)
    thread.start()
    return RunningHub(server, state, thread)
