"""``adapterctl generate``: text generation on a base model with adapters, scriptable.

Parses options, loads the base and adapters, calls :mod:`adapterctl.core.generate.loop` and renders:
streamed text for one prompt in a terminal, a Rich view otherwise, one JSON document with
``--json``, one JSON line per finished completion with ``--jsonl``.
"""

from __future__ import annotations

import sys

import typer

from adapterctl.cli.attach import DeviceMapOpt, DtypeOpt, MaxMemoryOpt, OffloadOpt, QuantizeOpt
from adapterctl.cli.common import RevisionOpt, TokenOpt, TrustRemoteCodeOpt, examples, hub_options
from adapterctl.cli.output import get_output
from adapterctl.errors import Interrupted, UsageError

PANEL_PROMPTS = "Prompts"
PANEL_DECODING = "Decoding"
PANEL_ADAPTERS = "Adapters"
PANEL_OUT = "Output"


def generate_cmd(
    args: list[str] = typer.Argument(None, metavar="[BASE] [-]", show_default=False,
                                     help="Base model folder or Hub id (default: the first "
                                     "adapter's base_model_name_or_path); '-' reads prompts from stdin."),
    adapter: list[str] = typer.Option(None, "--adapter", "-a", show_default=False,
                                      rich_help_panel=PANEL_ADAPTERS,
                                      help="Adapter folder or Hub id, optionally `=WEIGHT`. "
                                      "Repeat to apply a weighted combination."),
    compare: bool = typer.Option(False, "--compare", rich_help_panel=PANEL_ADAPTERS,
                                 help="Run the prompts on the base and on each adapter, side by side."),
    no_fold: bool = typer.Option(False, "--no-fold", rich_help_panel=PANEL_ADAPTERS,
                                 help="Keep adapters unmerged even where folding them into the "
                                 "weights is exact (slower; for checks)."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", show_default=False,
                                     rich_help_panel=PANEL_PROMPTS, help="A prompt (repeatable)."),
    prompts_file: str = typer.Option(None, "--prompts", rich_help_panel=PANEL_PROMPTS,
                                     help="Prompts file: text (one per line) or JSONL with "
                                     "`prompt` and optional `adapter`, `max_new_tokens`, `id`; "
                                     "'-' for stdin."),
    chat: bool = typer.Option(False, "--chat", rich_help_panel=PANEL_PROMPTS,
                              help="Wrap each prompt in the tokenizer's chat template."),
    system: str = typer.Option(None, "--system", rich_help_panel=PANEL_PROMPTS,
                               help="System message for --chat."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", rich_help_panel=PANEL_DECODING,
                                       help="Most tokens to generate per prompt."),
    temperature: float = typer.Option(None, "--temperature", rich_help_panel=PANEL_DECODING,
                                      help="Sampling temperature (> 0 samples; default greedy)."),
    top_p: float = typer.Option(None, "--top-p", rich_help_panel=PANEL_DECODING,
                                help="Nucleus sampling: keep the most likely tokens up to this mass."),
    top_k: int = typer.Option(None, "--top-k", rich_help_panel=PANEL_DECODING,
                              help="Sample among the K most likely tokens."),
    repetition_penalty: float = typer.Option(None, "--repetition-penalty", rich_help_panel=PANEL_DECODING,
                                             help="Penalise tokens already seen (> 1 discourages)."),
    seed: int = typer.Option(None, "--seed", rich_help_panel=PANEL_DECODING,
                             help="Random seed: the same seed reproduces a sampled run."),
    stop: list[str] = typer.Option(None, "--stop", show_default=False, rich_help_panel=PANEL_DECODING,
                                   help="Stop when the completion contains this string (repeatable); "
                                   "the string is not included."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", rich_help_panel=PANEL_DECODING,
                                   help="Prompts per forward pass (left-padded)."),
    dtype: str = DtypeOpt,
    device_map: str = DeviceMapOpt,
    max_memory: str = MaxMemoryOpt,
    offload_folder: str = OffloadOpt,
    quantize: str = QuantizeOpt,
    trust_remote_code: bool = TrustRemoteCodeOpt,
    jsonl: bool = typer.Option(False, "--jsonl", rich_help_panel=PANEL_OUT,
                               help="One JSON line per completion on stdout, as each finishes."),
    logprobs: bool = typer.Option(False, "--logprobs", rich_help_panel=PANEL_OUT,
                                  help="Include each generated token's log-probability (JSON/JSONL)."),
    revision: str = RevisionOpt,
    token: str = TokenOpt,
) -> None:
    """Generate text with a base model and adapters: several adapters in one batch, streamed."""
    from adapterctl.cli import generate_run as view
    from adapterctl.core.engine.session import Placement
    from adapterctl.core.generate.decoding import DecodingConfig
    from adapterctl.core.generate.prompts import collect_prompts

    out = get_output()
    if out.json and jsonl:
        raise UsageError("--json and --jsonl cannot be combined",
                         hint="--json prints one document at the end; --jsonl one line per completion.")
    base_ref, use_stdin = _split_positionals(args or [])
    choices = [_parse_adapter(a) for a in adapter or []]
    cfg = DecodingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                         stop=tuple(stop or ()), logprobs=logprobs)
    cfg.check()
    if system is not None and not chat:
        raise UsageError("--system needs --chat", hint="Add --chat to use the chat template.")
    if compare and not choices:
        raise UsageError("--compare needs at least one --adapter")
    if batch_size < 1:  # before minutes of loading, not after
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    stdin = sys.stdin if use_stdin or prompts_file == "-" else None
    specs = collect_prompts(prompt or [], prompts_file, stdin)
    hub = hub_options(revision, token)
    placement = Placement(dtype, device_map, max_memory, offload_folder, quantize, trust_remote_code)
    session = view.load_session(base_ref, choices, specs, hub, placement, fold=not no_fold)
    run = view.Runner(session, specs, cfg, batch_size=batch_size, chat=chat, system=system,
                      jsonl=jsonl, stream=_should_stream(out, specs, compare, jsonl))
    results = run.compare() if compare else [run.generate()]
    view.report(out, session, results, compare=compare, jsonl=jsonl, streamed=run.streamed)
    if any(r.interrupted for r in results):
        raise Interrupted("interrupted: printed what was generated so far")


def _split_positionals(args: list[str]) -> tuple[str | None, bool]:
    rest = [a for a in args if a != "-"]
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(rest[1:])}",
                         hint="Give prompts with --prompt TEXT or --prompts FILE; only BASE and '-' "
                              "are positional.")
    return (rest[0] if rest else None), "-" in args


def _parse_adapter(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH=WEIGHT`` (a path may itself contain '=': only a number after the last
    '=' is a weight)."""
    ref, sep, weight = text.rpartition("=")
    if sep:
        try:
            return ref, float(weight)
        except ValueError:
            pass
    return text, 1.0


def _should_stream(out, specs, compare: bool, jsonl: bool) -> bool:
    return (len(specs) == 1 and not compare and not jsonl and not out.json
            and out.out.is_terminal)


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        epilog=examples(
            "adapterctl generate ./base --adapter ./my-lora --prompt 'Once upon a time'",
            "adapterctl generate --adapter ./a --adapter ./b --compare --prompts prompts.txt",
            "adapterctl generate ./base --adapter ./a --prompts mixed.jsonl --jsonl | jq .completion",
        ),
    )(generate_cmd)
