"""The body of ``adapterctl generate`` (imported only when the command runs: it needs torch):
loading the base and adapters, running, streaming and rendering results."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace

from adapterctl.cli.output import Output, get_output
from adapterctl.core.generate.decoding import DecodingConfig
from adapterctl.core.generate.loop import (
    BaseRouter,
    Completion,
    GenerationResult,
    compare_completions,
    generate_completions,
)
from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec
from adapterctl.core.generate.routing import AttachedAdapter, EngineRouter, attach_for_run
from adapterctl.errors import Interrupted, NotFoundError, UsageError


@dataclass
class Session:
    """A loaded base with its adapters attached, and the router that applies them."""

    base: str
    model: object
    tokenizer: object
    adapters: list[AttachedAdapter]
    cli_adapters: list[str]  # row keys of each --adapter choice alone, in order
    router: object

    def to_dict(self) -> dict:
        return {"base": self.base, "adapters": [a.to_dict() for a in self.adapters]}


def load_session(base_ref: str | None, choices: list[tuple[str, float]], specs: list[PromptSpec],
                 hub, placement, fold: bool) -> Session:
    """Load the base (from the first adapter's config when BASE is omitted), attach adapters."""
    from adapterctl.core.engine.model import load_base

    out = get_output()
    base_ref = base_ref or base_from_adapter(choices, hub)
    with out.status(f"loading {base_ref}"):
        # --revision names the adapter's revision, not the base's
        base = load_base(base_ref, placement.dtype, placement.device_map, placement.max_memory,
                         placement.offload_folder, placement.quantize,
                         hub=replace(hub, revision=None) if hub else None,
                         trust_remote_code=placement.trust_remote_code)
    if getattr(base, "tokenizer", None) is None:
        raise NotFoundError(f"{base_ref}: the base model has no tokenizer",
                            hint="Copy tokenizer.json and tokenizer_config.json (from the model's "
                                 "original repository) into the model folder.")
    with out.status("attaching adapters"):
        adapters = attach_for_run(base.model, choices, specs, hub)
    for a in adapters:
        for text in a.warnings:
            out.warn(f"{a.name}: {text}")
    router, labels = BaseRouter(), []
    if adapters:
        default = {a.name: a.weight for a in adapters[:len(choices)]}
        router = EngineRouter(base.model, adapters, default,
                              can_fold=fold and not is_quantized(base))
        labels = [router.label_alone(a.name) for a in adapters[:len(choices)]]
    return Session(base_ref, base.model, base.tokenizer, adapters, labels, router)


def base_from_adapter(choices: list[tuple[str, float]], hub) -> str:
    """BASE omitted: the first adapter's ``base_model_name_or_path``."""
    from adapterctl.core.engine.session import base_from_adapter as from_config
    from adapterctl.io.resolve import resolve_adapter_dir

    if not choices:
        raise UsageError("no base model given", hint="Pass BASE, or an --adapter whose "
                         "adapter_config.json names its base_model_name_or_path.")
    ref = choices[0][0]
    base = from_config(resolve_adapter_dir(ref, hub, need_weights=False), ref)
    get_output().info(f"base model from {ref}: {base}")
    return base


def is_quantized(base) -> bool:
    if getattr(base, "quantize", None):
        return True
    return getattr(getattr(base.model, "config", None), "quantization_config", None) is not None


class Runner:
    """Runs generation for the command: streams one prompt, writes JSONL lines as rows finish."""

    def __init__(self, session: Session, specs: list[PromptSpec], cfg: DecodingConfig, *,
                 batch_size: int, chat: bool, system: str | None, jsonl: bool, stream: bool) -> None:
        self.session, self.specs, self.cfg = session, specs, cfg
        self.kw = {"batch_size": batch_size, "chat": chat, "system": system,
                   "on_token": self._on_token if stream else None,
                   "on_complete": self._on_complete if jsonl else None}
        self.streamed = False

    def generate(self) -> GenerationResult:
        s = self.session
        result = generate_completions(s.model, s.tokenizer, self.specs, self.cfg, router=s.router,
                                      **self.kw)
        if self.streamed:
            sys.stdout.write("\n")
            sys.stdout.flush()
        return result

    def compare(self) -> list[GenerationResult]:
        s = self.session
        return compare_completions(s.model, s.tokenizer, self.specs, self.cfg, s.router,
                                   [BASE_KEY, *s.cli_adapters], **self.kw)

    def _on_token(self, spec: PromptSpec, text: str) -> None:
        self.streamed = True
        sys.stdout.write(text)
        sys.stdout.flush()

    def _on_complete(self, c: Completion) -> None:
        sys.stdout.write(json.dumps(c.to_dict()) + "\n")
        sys.stdout.flush()


def report(out: Output, session: Session, results: list[GenerationResult], *, compare: bool,
           jsonl: bool, streamed: bool) -> None:
    """Warnings and a summary on stderr; the results on stdout (unless JSONL already wrote them)."""
    for r in results:
        for w in r.warnings:
            out.warn(w)
    _summary(out, results)
    if jsonl:
        return
    if out.json:
        _print_json(out, session, results, compare)
    elif compare:
        out.result({}, lambda console: render_compare(console, session, results))
    elif not streamed:
        out.result({}, lambda console: render_completions(console, results[0].completions))


def _summary(out: Output, results: list[GenerationResult]) -> None:
    for r in results:
        n = sum(c.num_tokens for c in r.completions)
        out.info(f"[dim]{len(r.completions)} completion(s), {n} tokens in {r.elapsed_s:.2f}s "
                 f"({r.tokens_per_second:.1f} tokens/s; adapters: {r.mode})"
                 + (f"; seed {r.seed}" if r.seed is not None else "") + "[/dim]", markup=True)


def _print_json(out: Output, session: Session, results: list[GenerationResult], compare: bool) -> None:
    first = results[0]
    doc = {**session.to_dict(), **first.to_dict()}
    if compare:
        doc.update(mode=[r.mode for r in results],
                   interrupted=any(r.interrupted for r in results),
                   elapsed_s=round(sum(r.elapsed_s for r in results), 3),
                   warnings=sorted({w for r in results for w in r.warnings}),
                   completions=[c.to_dict() for r in results for c in r.completions],
                   compare=compare_rows(results))
        doc.pop("tokens_per_second")
    if doc["interrupted"]:  # one document still, saying both what failed and what was made
        err = Interrupted("interrupted: printed what was generated so far")
        sys.stdout.write(json.dumps({"ok": False, "error": err.to_dict(), **doc}) + "\n")
        sys.stdout.flush()
        out.emitted = True
        return
    out.result(doc)


def compare_rows(results: list[GenerationResult]) -> list[dict]:
    """Per prompt: its id, text and the completion of every variant (base first)."""
    rows: dict[str, dict] = {}
    for r in results:
        for c in r.completions:
            row = rows.setdefault(c.id, {"id": c.id, "prompt": c.prompt, "completions": []})
            row["completions"].append(c.to_dict())
    return list(rows.values())


def render_completions(console, completions: tuple[Completion, ...]) -> None:
    from rich.text import Text

    if len(completions) == 1:
        console.print(completions[0].completion, markup=False, highlight=False)
        return
    for c in completions:
        console.rule(Text(f"{c.id} · {c.adapter or 'base'} · {c.finish_reason}"), align="left")
        console.print(Text(c.prompt, style="dim") + Text(c.completion))


def render_compare(console, session: Session, results: list[GenerationResult]) -> None:
    from rich.table import Table
    from rich.text import Text

    names = ["base", *session.cli_adapters][:len(results)]
    table = Table(show_lines=True)
    table.add_column("prompt", style="dim")
    for name in names:
        table.add_column(name)
    for row in compare_rows(results):
        by_variant = {c["adapter"] or "base": c["completion"] for c in row["completions"]}
        # prompts and completions are user text: Text() keeps '[INST]' from reading as markup
        table.add_row(Text(row["prompt"]), *(Text(by_variant.get(n, "-")) for n in names))
    console.print(table)
