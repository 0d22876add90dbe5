"""A small local Hugging Face Hub for tests (stdlib ``http.server`` only, 127.0.0.1 only).

Implements what the real ``huggingface_hub`` 2.x client uses to create repos, upload (preupload,
LFS batch + basic PUT + verify, NDJSON commit), download (resolve HEAD/GET with Range), and read
repo info, trees, refs and branches, with the Hub's error headers (``X-Error-Code``), following
``shared/spec/hub-protocol.md`` section 3. Writes need ``Authorization: Bearer <token>`` of the
repo's owner. ``HubState.faults`` injects server errors; ``HubState.requests`` logs every call so
tests can assert what was (not) transferred. Written from the spec; no code copied.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from tests.hubserver.handler import Handler
from tests.hubserver.state import Blob, Commit, HubState, Repo, git_sha1, is_lfs

__all__ = ["Blob", "Commit", "HubState", "Repo", "RunningHub", "git_sha1", "is_lfs", "serve"]


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
