"""A scripted stand-in for an OpenAI-compatible server (stdlib ``http.server``, 127.0.0.1 only),
for the fault tests of ``generate --endpoint``: each request is answered by the next scripted
reply for its path (or the default: a Reply, or a function of the request's JSON body returning
one), and logged.

``RuntimeLora`` adds vLLM's runtime adapter routes (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``) with their answers and refusals as vLLM 0.32 words them
(``vllm/entrypoints/openai/models/serving.py``, ``vllm/lora/peft_helper.py``), and a
``/v1/models`` that lists what is loaded; scripted replies still come first (faults).

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
        self.routes: dict[str, object] = {}  # path -> fn(body) -> Reply, after the script
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
                    reply = queue.popleft() if queue else None
                    route = stub.routes.get(self.path)
                    if reply is None and route is not None:
                        reply = route(body)
                    if reply is None:
                        reply = stub.default.get(self.path)
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


class RuntimeLora:
    """vLLM's runtime LoRA routes on a stub: ``loaded`` maps served names to paths; an adapter
    whose rank (adapter_config.json's r and rank_pattern) is above ``max_lora_rank`` is refused
    as vLLM refuses it."""

    def __init__(self, stub: Stub, base: str, max_lora_rank: int = 256) -> None:
        self.base, self.max_lora_rank = base, max_lora_rank
        self.loaded: dict[str, str] = {}
        stub.routes["/v1/models"] = lambda body: Reply(200, models(self.base, self.loaded))
        stub.routes["/v1/load_lora_adapter"] = self.load
        stub.routes["/v1/unload_lora_adapter"] = self.unload
        stub.routes["/version"] = lambda body: Reply(200, {"version": "0.32.0"})

    @staticmethod
    def _error(status: int, message: str, kind: str) -> Reply:
        return Reply(status, {"error": {"message": message, "type": kind, "code": status}})

    def load(self, body) -> Reply:
        from pathlib import Path

        name, path = body.get("lora_name"), body.get("lora_path")
        if name in self.loaded:
            return self._error(400, f"The lora adapter '{name}' has already been loaded. If you want "
                               "to load the adapter in place, set 'load_inplace' to True.",
                               "InvalidUserInput")
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        rank = max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])
        if rank > self.max_lora_rank:
            return self._error(500, f"LoRA rank {rank} is greater than max_lora_rank "
                               f"{self.max_lora_rank}.", "InternalServerError")
        self.loaded[name] = path
        return Reply(200, f"Success: LoRA adapter '{name}' added successfully.")

    def unload(self, body) -> Reply:
        name = body.get("lora_name")
        if name not in self.loaded:
            return self._error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        del self.loaded[name]
        return Reply(200, f"Success: LoRA adapter '{name}' removed successfully.")
