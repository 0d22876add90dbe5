"""State of the local test Hub: repos, commits, blobs, LFS store, injected faults, request log."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                ".gguf", ".npy", ".zip", ".model")
MAX_BODY = 256 * 1024 * 1024  # bounded: tests never upload more than a few MB
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
BAD_TOKEN_MESSAGE = "Invalid credentials in Authorization header"
TRUNCATE = 0  # Fault.status meaning "send half the body, then close"


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

    def truncate(self, method: str, path_re: str, times: int = -1) -> None:
        """Make matching responses announce their full length but send only half the body, then
        drop the connection (a download cut short)."""
        self.faults.append(Fault(method, path_re, TRUNCATE, times))

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
