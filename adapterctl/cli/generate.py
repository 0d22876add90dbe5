"""``adapterctl generate``: text generation on a base model with adapters, scriptable.

Parses options, calls :mod:`adapterctl.core.generate.run` and renders: streamed text for one
prompt in a terminal, a Rich view otherwise, one JSON document with ``--json``, one JSON line per
finished completion with ``--jsonl``. Every byte goes through the output helper.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from adapterctl.cli.options import (
    PANEL_ADAPTERS,
    ApiKey,
    Concurrency,
    DeviceMap,
    Dtype,
    EngineName,
    GpuMemory,
    MaxMemory,
    OffloadFolder,
    PipelineParallel,
    Quantize,
    RayAddress,
    RayStage,
    Replicas,
    Revision,
    ServedModel,
    ServerUrl,
    TensorParallel,
    Timeout,
    Token,
    TrustRemoteCode,
    adapter_option,
    adapter_weights,
    engine_name,
    examples,
    hub_options,
    placement,
)
from adapterctl.cli.output import Output, get_output
from adapterctl.errors import Interrupted, UsageError

PANEL_PROMPTS = "Prompts"
PANEL_DECODING = "Decoding"
PANEL_OUT = "Output"


def _opt(*names: str, panel: str, help: str, **kw):
    return typer.Option(*names, rich_help_panel=panel, help=help, **kw)


Positionals = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[BASE] [-]",
        show_default=False,
        help="Base model folder or Hub id (default: the "
        "first adapter's base_model_name_or_path); '-' reads prompts from stdin.",
    ),
]
if TYPE_CHECKING:
    from adapterctl.core.generate.decoding import DecodingConfig
    from adapterctl.io.hub.ref import HubOptions

    # adapter_option builds the Annotated at runtime; the checker reads its type
    Adapters = list[str] | None
else:
    Adapters = adapter_option(
        "Adapter folder or Hub id, optionally `=WEIGHT`. Repeat to apply a weighted combination."
    )
Compare = Annotated[
    bool,
    _opt(
        "--compare",
        panel=PANEL_ADAPTERS,
        help="Run the prompts on the base and on each adapter, side by side.",
    ),
]
NoFold = Annotated[
    bool,
    _opt(
        "--no-fold",
        panel=PANEL_ADAPTERS,
        help="Keep adapters unmerged even where folding them into the weights is exact (slower; for checks).",
    ),
]
Prompt = Annotated[
    list[str] | None,
    _opt("--prompt", "-p", panel=PANEL_PROMPTS, help="A prompt (repeatable).", show_default=False),
]
PromptsFile = Annotated[
    str | None,
    _opt(
        "--prompts",
        panel=PANEL_PROMPTS,
        help="Prompts file: text (one per line) or "
        "JSONL with `prompt` and optional `adapter`, `max_new_tokens`, `id`; '-' for stdin.",
    ),
]
Chat = Annotated[
    bool, _opt("--chat", panel=PANEL_PROMPTS, help="Wrap each prompt in the tokenizer's chat template.")
]
System = Annotated[str | None, _opt("--system", panel=PANEL_PROMPTS, help="System message for --chat.")]
MaxNewTokens = Annotated[
    int, _opt("--max-new-tokens", "-n", panel=PANEL_DECODING, help="Most tokens to generate per prompt.")
]
Temperature = Annotated[
    float | None,
    _opt("--temperature", panel=PANEL_DECODING, help="Sampling temperature (> 0 samples; default greedy)."),
]
TopP = Annotated[
    float | None,
    _opt(
        "--top-p", panel=PANEL_DECODING, help="Nucleus sampling: keep the most likely tokens up to this mass."
    ),
]
TopK = Annotated[
    int | None, _opt("--top-k", panel=PANEL_DECODING, help="Sample among the K most likely tokens.")
]
RepetitionPenalty = Annotated[
    float | None,
    _opt(
        "--repetition-penalty", panel=PANEL_DECODING, help="Penalise tokens already seen (> 1 discourages)."
    ),
]
Seed = Annotated[
    int | None,
    _opt("--seed", panel=PANEL_DECODING, help="Random seed: the same seed reproduces a sampled run."),
]
Stop = Annotated[
    list[str] | None,
    _opt(
        "--stop",
        panel=PANEL_DECODING,
        show_default=False,
        help="Stop when the completion contains this string (repeatable); the string is not included.",
    ),
]
BatchSize = Annotated[
    int, _opt("--batch-size", "-b", panel=PANEL_DECODING, help="Prompts per forward pass (left-padded).")
]
Jsonl = Annotated[
    bool, _opt("--jsonl", panel=PANEL_OUT, help="One JSON line per completion on stdout, as each finishes.")
]
Logprobs = Annotated[
    bool,
    _opt("--logprobs", panel=PANEL_OUT, help="Include each generated token's log-probability (JSON/JSONL)."),
]


@dataclass(frozen=True)
class _Job:
    """What to run, whichever backend runs it."""

    base_ref: str | None
    choices: list
    specs: list
    cfg: DecodingConfig
    compare: bool
    chat: bool
    system: str | None
    jsonl: bool
    hub: HubOptions | None


def generate_cmd(
    args: Positionals = None,
    adapter: Adapters = None,
    compare: Compare = False,
    no_fold: NoFold = False,
    prompt: Prompt = None,
    prompts_file: PromptsFile = None,
    chat: Chat = False,
    system: System = None,
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    batch_size: BatchSize = 8,
    dtype: Dtype = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
    quantize: Quantize = None,
    trust_remote_code: TrustRemoteCode = False,
    jsonl: Jsonl = False,
    logprobs: Logprobs = False,
    revision: Revision = None,
    token: Token = None,
    engine: EngineName = "adapterctl",
    tensor_parallel_size: TensorParallel = None,
    pipeline_parallel_size: PipelineParallel = None,
    gpu_memory_utilization: GpuMemory = None,
    ray_address: RayAddress = None,
    replicas: Replicas = None,
    stage: RayStage = None,
    endpoint: ServerUrl = None,
    model: ServedModel = None,
    concurrency: Concurrency = 8,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
) -> None:
    """Generate text with a base model and adapters: several adapters in one batch, streamed.
    The same prompts and results on vLLM (--engine vllm), vLLM replicas on Ray Data (--engine ray)
    or any OpenAI-compatible server (--endpoint URL)."""
    from adapterctl.cli.generate_engines import (
        Endpoint,
        LocalEngine,
        RayEngine,
        Shared,
        VllmEngine,
        pick_backend,
    )
    from adapterctl.core.generate.prompts import collect_prompts
    from adapterctl.core.generate.results import DecodingConfig
    from adapterctl.core.runtime.session import AdapterChoice

    out = get_output()
    if out.json and jsonl:
        raise UsageError(
            "--json and --jsonl cannot be combined",
            hint="--json prints one document at the end; --jsonl one line per completion.",
        )
    base_ref, use_stdin = _split_positionals(args or [])
    choices = [AdapterChoice(r, w) for r, w in zip(*adapter_weights(list(adapter or [])))]
    cfg = DecodingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=tuple(stop or ()),
        logprobs=logprobs,
    )
    cfg.check()
    if system is not None and not chat:
        raise UsageError("--system needs --chat", hint="Add --chat to use the chat template.")
    if compare and not choices:
        raise UsageError("--compare needs at least one --adapter")
    if batch_size < 1:  # before minutes of loading, not after
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    shared = Shared(dtype, trust_remote_code)
    backend = pick_backend(
        engine_name(engine),
        LocalEngine(device_map, max_memory, offload_folder, quantize, no_fold, batch_size),
        VllmEngine(tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization),
        RayEngine(ray_address, replicas, stage),
        Endpoint(endpoint, model, concurrency, timeout, api_key),
        shared,
    )
    stdin = sys.stdin if use_stdin or prompts_file == "-" else None
    specs = collect_prompts(prompt or [], prompts_file, stdin)
    job = _Job(base_ref, choices, specs, cfg, compare, chat, system, jsonl, hub_options(revision, token))
    if isinstance(backend, LocalEngine):
        return _run_local(out, backend, shared, job)
    _run_elsewhere(out, backend, shared, job)


def _on_complete(out: Output, job: _Job):
    return (lambda c: out.json_line(c.to_dict())) if job.jsonl else None


def _run_elsewhere(out: Output, backend, shared, job: _Job) -> None:
    from adapterctl.cli.generate_engines import run_elsewhere

    report = run_elsewhere(
        backend,
        shared,
        job.hub,
        out.info,
        job.base_ref,
        job.choices,
        job.specs,
        job.cfg,
        compare=job.compare,
        chat=job.chat,
        system=job.system,
        on_complete=_on_complete(out, job),
    )
    for a in report.adapters:
        for text in a.to_dict()["warnings"]:
            out.warn(f"{a.name}: {text}")
    _finish(out, report, jsonl=job.jsonl, streamed=False)


def _run_local(out: Output, local, shared, job: _Job) -> None:
    from adapterctl.core.generate.run import open_generation, run_generation

    with out.status("loading"):
        gen = open_generation(
            job.base_ref,
            job.choices,
            job.specs,
            hub=job.hub,
            placement=placement(
                shared.dtype,
                local.device_map,
                local.max_memory,
                local.offload_folder,
                local.quantize,
                shared.trust_remote_code,
            ),
            fold=not local.no_fold,
            on_step=out.info,
        )
    for a in gen.session.adapters:
        for text in a.warnings:
            out.warn(f"{a.name}: {text}")
    stream = _Stream(out) if _should_stream(out, job.specs, job.compare, job.jsonl) else None
    report = run_generation(
        gen,
        job.specs,
        job.cfg,
        compare=job.compare,
        batch_size=local.batch_size,
        chat=job.chat,
        system=job.system,
        on_token=stream,
        on_complete=_on_complete(out, job),
    )
    if stream is not None and stream.started:
        out.stream("\n")
    _finish(out, report, jsonl=job.jsonl, streamed=bool(stream and stream.started))


def _finish(out: Output, report, *, jsonl: bool, streamed: bool) -> None:
    """Report, then fail the command if the run ended early (Ctrl-C, an endpoint that failed):
    what was made is printed either way."""
    error = next((r.error for r in report.results if r.error is not None), None)
    if report.interrupted and error is None:
        error = Interrupted("interrupted: printed what was generated so far")
    _report(out, report, jsonl=jsonl, streamed=streamed, error=error)


class _Stream:
    """Streams one completion's text to stdout as it is made."""

    def __init__(self, out: Output) -> None:
        self.out, self.started = out, False

    def __call__(self, spec, text: str) -> None:
        self.started = True
        self.out.stream(text)


def _split_positionals(args: list[str]) -> tuple[str | None, bool]:
    rest = [a for a in args if a != "-"]
    if len(rest) > 1:
        raise UsageError(
            f"unexpected arguments: {' '.join(rest[1:])}",
            hint="Give prompts with --prompt TEXT or --prompts FILE; only BASE and '-' are positional.",
        )
    return (rest[0] if rest else None), "-" in args


def _should_stream(out, specs, compare: bool, jsonl: bool) -> bool:
    return len(specs) == 1 and not compare and not jsonl and not out.json and out.out.is_terminal


def _report(out: Output, report, *, jsonl: bool, streamed: bool, error=None) -> None:
    """Warnings and a summary on stderr; the results on stdout (unless JSONL already wrote them)."""
    for r in report.results:
        for w in r.warnings:
            out.warn(w)
        n = sum(c.num_tokens for c in r.completions)
        out.info(
            f"[dim]{len(r.completions)} completion(s), {n} tokens in {r.elapsed_s:.2f}s "
            f"({r.tokens_per_second:.1f} tokens/s; adapters: {r.mode})"
            + (f"; seed {r.seed}" if r.seed is not None else "")
            + "[/dim]",
            markup=True,
        )
    if jsonl:
        render, doc = None, {}
    elif report.compare:
        render, doc = (lambda console: render_compare(console, report)), report.to_dict()
    elif not streamed:
        render, doc = (
            (lambda console: render_completions(console, report.results[0].completions)),
            report.to_dict(),
        )
    else:
        render, doc = None, report.to_dict()
    if error is not None:  # one document still, saying both what failed and what was made
        if jsonl:
            raise error
        out.fail(doc, render, error)
    if not jsonl:
        out.result(doc, render)


def render_completions(console, completions) -> None:
    from rich.text import Text

    if len(completions) == 1:
        console.print(completions[0].completion, markup=False, highlight=False)
        return
    for c in completions:
        console.rule(Text(f"{c.id} · {c.adapter or 'base'} · {c.finish_reason}"), align="left")
        console.print(Text(c.prompt, style="dim") + Text(c.completion))


def render_compare(console, report) -> None:
    from rich.table import Table
    from rich.text import Text

    names = ["base", *report.variants][: len(report.results)]
    table = Table(show_lines=True)
    table.add_column("prompt", style="dim")
    for name in names:
        table.add_column(name)
    for row in report.compare_rows():
        by_variant = {c["adapter"] or "base": c["completion"] for c in row["completions"]}
        # prompts and completions are user text: Text() keeps '[INST]' from reading as markup
        table.add_row(Text(row["prompt"]), *(Text(by_variant.get(n, "-")) for n in names))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        epilog=examples(
            "adapterctl generate ./base --adapter ./my-lora --prompt 'Once upon a time'",
            "adapterctl generate --adapter ./a --adapter ./b=0.5 --compare --prompts prompts.txt",
            "adapterctl generate ./base --adapter ./a --prompts mixed.jsonl --jsonl | jq .completion",
        ),
    )(generate_cmd)
