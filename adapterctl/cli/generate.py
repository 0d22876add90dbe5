"""``adapterctl generate``: text generation on a base model with adapters, scriptable.

Parses options, calls :mod:`adapterctl.core.generate.run` and renders: streamed text for one
prompt in a terminal, a Rich view otherwise, one JSON document with ``--json``, one JSON line per
finished completion with ``--jsonl``. Every byte goes through the output helper.
"""

from __future__ import annotations

import sys
from typing import Annotated

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
    Revision,
    ServedModel,
    ServerUrl,
    TensorParallel,
    Timeout,
    Token,
    TrustRemoteCode,
    adapter_weights,
    examples,
    hub_options,
    placement,
)
from adapterctl.cli.output import Output, get_output
from adapterctl.errors import Interrupted, UsageError

PANEL_PROMPTS = "Prompts"
PANEL_DECODING = "Decoding"
PANEL_OUT = "Output"


def generate_cmd(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[BASE] [-]",
            show_default=False,
            help="Base model folder or Hub id (default: the "
            "first adapter's base_model_name_or_path); '-' reads prompts from stdin.",
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            "-a",
            show_default=False,
            rich_help_panel=PANEL_ADAPTERS,
            help="Adapter folder or Hub id, optionally `=WEIGHT`. Repeat to apply a weighted combination.",
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            rich_help_panel=PANEL_ADAPTERS,
            help="Run the prompts on the base and on each adapter, side by side.",
        ),
    ] = False,
    no_fold: Annotated[
        bool,
        typer.Option(
            "--no-fold",
            rich_help_panel=PANEL_ADAPTERS,
            help="Keep adapters unmerged even where "
            "folding them into the weights is exact (slower; for checks).",
        ),
    ] = False,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt", "-p", show_default=False, rich_help_panel=PANEL_PROMPTS, help="A prompt (repeatable)."
        ),
    ] = None,
    prompts_file: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            rich_help_panel=PANEL_PROMPTS,
            help="Prompts file: text (one per line) or "
            "JSONL with `prompt` and optional `adapter`, `max_new_tokens`, `id`; '-' for stdin.",
        ),
    ] = None,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat", rich_help_panel=PANEL_PROMPTS, help="Wrap each prompt in the tokenizer's chat template."
        ),
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", rich_help_panel=PANEL_PROMPTS, help="System message for --chat.")
    ] = None,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens",
            "-n",
            rich_help_panel=PANEL_DECODING,
            help="Most tokens to generate per prompt.",
        ),
    ] = 64,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            rich_help_panel=PANEL_DECODING,
            help="Sampling temperature (> 0 samples; default greedy).",
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p",
            rich_help_panel=PANEL_DECODING,
            help="Nucleus sampling: keep the most likely tokens up to this mass.",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k", rich_help_panel=PANEL_DECODING, help="Sample among the K most likely tokens."
        ),
    ] = None,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(
            "--repetition-penalty",
            rich_help_panel=PANEL_DECODING,
            help="Penalise tokens already seen (> 1 discourages).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            rich_help_panel=PANEL_DECODING,
            help="Random seed: the same seed reproduces a sampled run.",
        ),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            show_default=False,
            rich_help_panel=PANEL_DECODING,
            help="Stop when the completion contains this string (repeatable); the string is not included.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            "-b",
            rich_help_panel=PANEL_DECODING,
            help="Prompts per forward pass (left-padded).",
        ),
    ] = 8,
    dtype: Dtype = "auto",
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    offload_folder: OffloadFolder = None,
    quantize: Quantize = None,
    trust_remote_code: TrustRemoteCode = False,
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl",
            rich_help_panel=PANEL_OUT,
            help="One JSON line per completion on stdout, as each finishes.",
        ),
    ] = False,
    logprobs: Annotated[
        bool,
        typer.Option(
            "--logprobs",
            rich_help_panel=PANEL_OUT,
            help="Include each generated token's log-probability (JSON/JSONL).",
        ),
    ] = False,
    revision: Revision = None,
    token: Token = None,
    engine: EngineName = "adapterctl",
    tensor_parallel_size: TensorParallel = None,
    pipeline_parallel_size: PipelineParallel = None,
    gpu_memory_utilization: GpuMemory = None,
    endpoint: ServerUrl = None,
    model: ServedModel = None,
    concurrency: Concurrency = 8,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
) -> None:
    """Generate text with a base model and adapters: several adapters in one batch, streamed.
    The same prompts and results on vLLM (--engine vllm) or any OpenAI-compatible server
    (--endpoint URL)."""
    from adapterctl.cli.generate_engines import engine_choice
    from adapterctl.core.generate.prompts import collect_prompts
    from adapterctl.core.generate.results import DecodingConfig
    from adapterctl.core.generate.run import open_generation, run_generation
    from adapterctl.core.runtime.session import AdapterChoice

    out = get_output()
    if out.json and jsonl:
        raise UsageError(
            "--json and --jsonl cannot be combined",
            hint="--json prints one document at the end; --jsonl one line per completion.",
        )
    base_ref, use_stdin = _split_positionals(args or [])
    refs, weights = adapter_weights(list(adapter or []))
    choices = [AdapterChoice(r, w) for r, w in zip(refs, weights)]
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
    stdin = sys.stdin if use_stdin or prompts_file == "-" else None
    elsewhere = engine_choice(
        engine,
        endpoint,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        hub=hub_options(revision, token),
        on_step=out.info,
        vllm={
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
        },
        remote={"model": model, "concurrency": concurrency, "timeout": timeout, "api_key": api_key},
        ours={
            "--no-fold": no_fold,
            "--device-map": device_map,
            "--max-memory": max_memory,
            "--offload-folder": offload_folder,
            "--quantize": quantize,
        },
    )
    specs = collect_prompts(prompt or [], prompts_file, stdin)
    on_complete = (lambda c: out.json_line(c.to_dict())) if jsonl else None
    if elsewhere is not None:
        report = elsewhere(
            base_ref, choices, specs, cfg, compare=compare, chat=chat, system=system, on_complete=on_complete
        )
        for a in report.adapters:
            for text in a.to_dict()["warnings"]:
                out.warn(f"{a.name}: {text}")
        return _finish(out, report, jsonl=jsonl, streamed=False)
    with out.status("loading"):
        gen = open_generation(
            base_ref,
            choices,
            specs,
            hub=hub_options(revision, token),
            placement=placement(dtype, device_map, max_memory, offload_folder, quantize, trust_remote_code),
            fold=not no_fold,
            on_step=out.info,
        )
    for a in gen.session.adapters:
        for text in a.warnings:
            out.warn(f"{a.name}: {text}")
    stream = _Stream(out) if _should_stream(out, specs, compare, jsonl) else None
    report = run_generation(
        gen,
        specs,
        cfg,
        compare=compare,
        batch_size=batch_size,
        chat=chat,
        system=system,
        on_token=stream,
        on_complete=on_complete,
    )
    if stream is not None and stream.started:
        out.stream("\n")
    _finish(out, report, jsonl=jsonl, streamed=bool(stream and stream.started))


def _finish(out: Output, report, *, jsonl: bool, streamed: bool) -> None:
    """Report, then fail the command if the run ended early (Ctrl-C, an endpoint that failed):
    what was made is printed either way."""
    error = next((r.error for r in report.results if r.error is not None), None)
    if report.interrupted and error is None:
        error = Interrupted("interrupted: printed what was generated so far")
    _report(out, report, jsonl=jsonl, streamed=streamed, error=error)
    if error is not None:
        raise error


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
        return
    if out.json:
        doc = report.to_dict()
        if error is not None:  # one document still, saying both what failed and what was made
            return out.result({"error": error.to_dict(), **doc}, ok=False)
        return out.result(doc)
    if report.compare:
        out.result({}, lambda console: render_compare(console, report))
    elif not streamed:
        out.result({}, lambda console: render_completions(console, report.results[0].completions))


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
