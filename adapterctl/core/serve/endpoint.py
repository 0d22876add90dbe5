"""``generate --endpoint URL``: the same prompts, options and results against any OpenAI-compatible
server (vLLM, SGLang, llama.cpp's server, LoRAX, TGI).

- The base goes by ``--model``, else BASE where the server lists it (by name or path), else the
  one root model of the server's ``/v1/models``.
- Adapters go by their served names; where the server lists each adapter's path (vLLM's
  ``root``), a local adapter folder names the adapter served from it, so a prompts file written
  for ``--engine adapterctl`` runs unchanged against a server that ``adapterctl serve`` started.
- Requests run ``concurrency`` at a time (one prompt each: per-prompt ``max_new_tokens`` and
  adapters); JSONL results go out as they come. When a request fails for good, no new ones are
  sent, those in flight are collected, and the result carries the error with what was made.
- One adapter per request: a weighted combination is refused before anything is sent.
- Greedy is ``temperature: 0``; logprobs are the server's ``token_logprobs`` (vLLM's default
  logprobs mode is the raw model's log-softmax, as ours); token ids come with vLLM's
  ``return_token_ids`` (None where a server returns text only); vLLM's ``stop_reason`` tells a
  ``--stop`` string (a string) from the end of sequence (None).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.core.generate.jobs import (
    Job,
    check_one_adapter_per_request,
    interrupted_completion,
    plan_jobs,
    split_runs,
)
from adapterctl.core.generate.prompts import BASE_KEY, DEFAULT_KEY, PromptSpec
from adapterctl.core.generate.results import Completion, DecodingConfig, GenerationResult
from adapterctl.core.serve.client import Client, EndpointOptions
from adapterctl.errors import AdapterctlError, EndpointError, NotFoundError, UsageError

if TYPE_CHECKING:
    from adapterctl.core.generate.run import GenerateReport
    from adapterctl.core.runtime.session import AdapterChoice

MODE = "endpoint"


@dataclass(frozen=True)
class ServedModel:
    id: str
    root: str | None = None  # vLLM: the model's or adapter's path on the server
    parent: str | None = None  # vLLM: the base an adapter belongs to (None: a base)


def list_models(client: Client) -> list[ServedModel] | None:
    """The server's ``/v1/models``; None when it has none (not every server implements it)."""
    try:
        doc = client.get("/models", "listing models")
    except NotFoundError:
        return None
    data = doc.get("data")
    if not isinstance(data, list):
        raise EndpointError(f"{client.root}/models: malformed response: no 'data' list")
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            root, parent = item.get("root"), item.get("parent")
            out.append(
                ServedModel(
                    item["id"],
                    root if isinstance(root, str) else None,
                    parent if isinstance(parent, str) else None,
                )
            )
    return out


@dataclass(frozen=True)
class ServedNames:
    """What to send as ``model``: the base's served name, and each adapter reference's."""

    base: str
    adapters: dict[str, str]  # reference as given (name or local path) -> served name
    listed: tuple[str, ...] = ()  # every name the server lists (for messages)
    notes: dict[str, str] = field(default_factory=dict)  # served name -> how it was matched

    def lookup(self, ref: str) -> str | None:
        return self.adapters.get(ref)


def _same_path(a: str | None, b: str) -> bool:
    if not a:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def pick_base(models: list[ServedModel] | None, url: str, model: str | None, base_ref: str | None) -> str:
    if model:
        return model
    roots = [m for m in models or [] if m.parent is None]
    if base_ref:
        for m in roots:
            if m.id == base_ref or _same_path(m.root, base_ref):
                return m.id
        if models is None:
            return base_ref
    if len(roots) == 1 or (roots and len({m.root for m in roots}) == 1 and roots[0].root):
        return roots[0].id  # one model (maybe under several served names): its first name
    if models is None:
        raise UsageError(
            f"{url} does not list its models (/v1/models)",
            hint="Name the served base model with --model NAME.",
        )
    names = ", ".join(m.id for m in roots) or "none"
    raise UsageError(
        f"{url} serves {len(roots)} base models ({names}): which one?",
        hint="Pass --model NAME (or BASE as the server names it).",
    )


def resolve_names(
    models: list[ServedModel] | None, url: str, model: str | None, base_ref: str | None, refs: Sequence[str]
) -> ServedNames:
    """Served names for the base and every adapter reference (a served name, or the local folder
    the server loaded it from). Unknown names are refused before any prompt is sent."""
    base = pick_base(models, url, model, base_ref)
    adapters: dict[str, str] = {}
    notes: dict[str, str] = {}
    listed = tuple(m.id for m in models or [])
    for ref in refs:
        if models is None or ref in listed:
            adapters[ref] = ref
            continue
        match = [m.id for m in models if m.parent is not None and _same_path(m.root, ref)]
        if not match and Path(ref).is_dir():
            # served from elsewhere (a copy ``serve`` converted for the engine): the name
            # ``serve -a FOLDER`` gives it, the one naming rule (the folder's name)
            from adapterctl.core.runtime.session import name_from_ref

            match = [m.id for m in models if m.parent is not None and m.id == name_from_ref(ref)]
            if match:
                notes[match[0]] = (
                    f"{ref} matched by its folder's name: the server loads "
                    f"{match[0]!r} from another folder (`adapterctl verify` "
                    "checks it is the same adapter)"
                )
        if not match:
            served = [m.id for m in models if m.parent is not None]
            raise NotFoundError(
                f"{url} serves no adapter named {ref!r}"
                + (" (nor one loaded from that folder)" if Path(ref).exists() else "")
                + f"; its adapters: {', '.join(served) or 'none'}",
                hint="Use the served name (the NAME of --lora-modules NAME=PATH).",
            )
        adapters[ref] = match[0]
    return ServedNames(base, adapters, listed, notes)


def request_body(
    job: Job, model: str, cfg: DecodingConfig, chat: bool, system: str | None
) -> tuple[str, dict]:
    """(path, JSON body) of one prompt's request."""
    body: dict = {
        "model": model,
        "max_tokens": job.spec.max_new_tokens or cfg.max_new_tokens,
        "n": 1,
        "return_token_ids": True,
    }
    if chat:
        messages = [{"role": "system", "content": system}] if system else []
        body["messages"] = [*messages, {"role": "user", "content": job.spec.prompt}]
    else:
        body["prompt"] = job.spec.prompt
    if cfg.sampling:
        body["temperature"] = cfg.temperature if cfg.temperature is not None else 1.0
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if cfg.top_k is not None:
            body["top_k"] = cfg.top_k
    else:
        body["temperature"] = 0.0
    if cfg.repetition_penalty is not None:
        body["repetition_penalty"] = cfg.repetition_penalty
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    if cfg.stop:
        body["stop"] = list(cfg.stop)
    if cfg.logprobs:
        body.update({"logprobs": True, "top_logprobs": 1} if chat else {"logprobs": 1})
    return ("/chat/completions" if chat else "/completions"), body


def parse_choice(doc: dict, job: Job, chat: bool, url: str, latency: float, logprobs: bool) -> Completion:
    """One completion from a response; anything missing or of the wrong type is "malformed"."""
    where = f"{url}: malformed response for prompt {job.spec.id!r}"
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EndpointError(f"{where}: no 'choices'")
    c = choices[0]
    message = c.get("message")
    text = (message.get("content") if isinstance(message, dict) else None) if chat else c.get("text")
    if not isinstance(text, str):
        raise EndpointError(f"{where}: no completion text")
    ids = c.get("token_ids")
    ids = tuple(ids) if isinstance(ids, list) and all(type(i) is int for i in ids) else None
    usage = doc.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    count = usage.get("completion_tokens")
    count = count if type(count) is int else None
    n = len(ids) if ids is not None else (count or 0)
    prompt_tokens = usage.get("prompt_tokens")
    return Completion(
        id=job.spec.id,
        prompt=job.spec.prompt,
        adapter=job.label,
        completion=text,
        completion_token_ids=ids,
        finish_reason=finish_reason(c, where),
        prompt_tokens=prompt_tokens if type(prompt_tokens) is int else None,
        tokens_per_second=n / latency if latency > 0 else 0.0,
        logprobs=_logprobs(c, chat) if logprobs else None,
        token_count=count,
    )


def finish_reason(choice: dict, where: str) -> str:
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length"
    if reason in ("stop", "eos", "eos_token", None):
        # vLLM: stop_reason is the --stop string that matched, None at the end of sequence
        return "stop" if isinstance(choice.get("stop_reason"), str) else "eos"
    raise EndpointError(
        f"{where}: the server ended it with finish_reason {reason!r}",
        hint="The server aborted the request; see its log.",
    )


def _logprobs(choice: dict, chat: bool) -> tuple[float, ...] | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    if chat:
        items = lp.get("content")
        values = (
            [i.get("logprob") for i in items]
            if isinstance(items, list) and all(isinstance(i, dict) for i in items)
            else None
        )
    else:
        values = lp.get("token_logprobs")
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        return None
    return tuple(float(v) for v in values)


@dataclass
class EndpointRun:
    """``generate --endpoint``: a client, the served names, and how to run."""

    client: Client
    names: ServedNames
    concurrency: int = 8
    chat: bool = False
    system: str | None = None

    def generate(
        self,
        specs: Sequence[PromptSpec],
        cfg: DecodingConfig,
        default: str | None = None,
        compare: Sequence[str] | None = None,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> list[GenerationResult]:
        """One result, or one per variant with ``compare`` (base first). ``default``/``compare``
        are adapter references as given; results name adapters by their served names."""
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {self.concurrency}")
        served = [self.names.lookup(r) or r for r in compare] if compare is not None else None
        jobs = plan_jobs(specs, self.names.lookup(default) if default else None, self.names.lookup, served)
        start = time.perf_counter()
        done, interrupted, error = self._run(jobs, cfg, on_complete)
        return split_runs(
            jobs,
            done,
            mode=MODE,
            seed=cfg.seed,
            interrupted=interrupted,
            error=error,
            elapsed_s=time.perf_counter() - start,
        )

    def _one(self, job: Job, cfg: DecodingConfig) -> Completion:
        path, body = request_body(job, job.label or self.names.base, cfg, self.chat, self.system)
        t0 = time.perf_counter()
        doc = self.client.post(path, body, f"prompt {job.spec.id!r}")
        return parse_choice(
            doc, job, self.chat, self.client.root + path, time.perf_counter() - t0, cfg.logprobs
        )

    def _run(
        self, jobs: list[Job], cfg: DecodingConfig, on_complete: Callable[[Completion], None] | None
    ) -> tuple[list[Completion | None], bool, AdapterctlError | None]:
        """At most ``concurrency`` requests in flight (daemon threads: Ctrl-C does not wait for
        them). Results are handed to ``on_complete`` from this thread, in the order they come."""
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(jobs)):
            todo.put(i)
        results: queue.SimpleQueue = queue.SimpleQueue()
        stop, started = threading.Event(), set()

        def work() -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                started.add(i)
                try:
                    results.put((i, self._one(jobs[i], cfg), None))
                except BaseException as err:  # handed to the main thread, which reports it
                    stop.set()  # here, so that no worker takes another job first
                    results.put((i, None, err))

        threads = [
            threading.Thread(target=work, daemon=True, name=f"adapterctl-endpoint-{k}")
            for k in range(min(self.concurrency, len(jobs)))
        ]
        for t in threads:
            t.start()
        done: list[Completion | None] = [None] * len(jobs)
        error: BaseException | None = None
        try:
            while True:
                try:
                    i, completion, err = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results.empty():
                        break
                    continue
                if err is not None:
                    error = error or err  # nothing new is sent; what is in flight is collected
                    continue
                done[i] = completion
                if on_complete is not None:
                    on_complete(completion)
        except KeyboardInterrupt:
            stop.set()
            for i in started:
                if done[i] is None:
                    done[i] = interrupted_completion(jobs[i])
            return done, True, None
        if error is not None and not isinstance(error, AdapterctlError):
            raise error  # a bug: the CLI reports it as one
        return done, False, error


@dataclass(frozen=True)
class ServedRef:
    """An adapter as the server serves it: its served name, what was given, its path there."""

    name: str
    source: str
    path: str | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "weight": 1.0,
            "warnings": list(self.warnings),
        }


def generate_on_endpoint(
    opts: EndpointOptions,
    base_ref: str | None,
    model: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    concurrency: int = 8,
    compare: bool = False,
    chat: bool = False,
    system: str | None = None,
    on_complete: Callable[[Completion], None] | None = None,
) -> GenerateReport:
    """``generate --endpoint`` as a library call: the prompts on the server's engine, adapters by
    their served names, the same report as our own engine's."""
    from adapterctl.core.generate.run import GenerateReport

    choices = list(choices)
    check_one_adapter_per_request([c.weight for c in choices], compare, "an endpoint")
    if concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    client = Client(opts)
    models = list_models(client)
    refs = list(
        dict.fromkeys(
            [c.ref for c in choices] + [s.adapter for s in specs if s.adapter not in (DEFAULT_KEY, BASE_KEY)]
        )
    )
    names = resolve_names(models, client.root, model, base_ref, refs)
    run = EndpointRun(client, names, concurrency, chat=chat, system=system)
    chosen = [c.ref for c in choices]
    results = run.generate(
        specs,
        cfg,
        default=chosen[0] if chosen and not compare else None,
        compare=chosen if compare else None,
        on_complete=on_complete,
    )
    roots = {m.id: m.root for m in models or []}
    served = {names.adapters[r]: r for r in refs}
    adapters = tuple(
        ServedRef(n, r, roots.get(n), tuple(filter(None, [names.notes.get(n)]))) for n, r in served.items()
    )
    return GenerateReport(
        names.base, adapters, tuple(results), compare, tuple(names.adapters[r] for r in chosen)
    )
