"""A scripted stand-in for an OpenAI-compatible server (stdlib ``http.server``, 127.0.0.1 only),
for the fault tests of ``generate --endpoint``: each request is answered by the next scripted
reply for its path (or the default: a Reply, or a function of the request's JSON body returning
one), and logged.

It fakes faults, never completions that a test compares with a model: those come from the real
vLLM server (tests/interop).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict | list | str = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow server)
    close: bool = False  # drop the connection without an answer


def completion(text: str, token_ids=None, finish: str = "length", stop_reason=None,
               logprobs=None, prompt_tokens: int = 3) -> dict:
    """A /v1/completions answer shaped like vLLM's."""
    choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason,
              "logprobs": None if logprobs is None else {"token_logprobs": logprobs}}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    n = len(token_ids) if token_ids is not None else len(text.split())
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                      "total_tokens": prompt_tokens + n}}


def models(base: str = "base", adapters: dict[str, str] | None = None,
           base_root: str | None = None) -> dict:
    """A /v1/models answer shaped like vLLM's (adapters: name -> path)."""
    data = [{"id": base, "object": "model", "root": base_root or base, "parent": None}]
    for name, path in (adapters or {}).items():
        data.append({"id": name, "object": "model", "root": path, "parent": base})
    return {"object": "list", "data": data}


class Stub:
    def __init__(self) -> None:
        self.script: dict[str, deque[Reply]] = defaultdict(deque)
        self.default: dict[str, Reply] = {}
        self.requests: list[dict] = []  # {"method", "path", "headers", "body"}
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                with stub.lock:
                    stub.requests.append({"method": self.command, "path": self.path,
                                          "headers": dict(self.headers), "body": body})
                    queue = stub.script[self.path]
                    reply = queue.popleft() if queue else stub.default.get(self.path)
                if callable(reply):  # a responder: the reply computed from the request's body
                    reply = reply(body)
                if reply is None:
                    reply = Reply(404, {"error": {"message": f"no route {self.path}"}})
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.close:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = reply.body
                if isinstance(data, (dict, list)):
                    data = json.dumps(data).encode()
                elif isinstance(data, str):
                    data = data.encode()
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, *replies: Reply) -> None:
        self.script[path].extend(replies)

    def posts(self, path: str = "/v1/completions") -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
