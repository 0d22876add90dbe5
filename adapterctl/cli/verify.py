"""``adapterctl verify``: the adapters a server serves against adapterctl's own reference; exits
non-zero unless every one matches (a deploy gate for CI)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from adapterctl.cli.options import (
    ApiKey,
    Concurrency,
    Dtype,
    Lora,
    Revision,
    ServedModel,
    Timeout,
    Token,
    TrustRemoteCode,
    adapter_option,
    examples,
    hub_options,
    placement,
    served_adapters,
)
from adapterctl.cli.output import get_output
from adapterctl.errors import UsageError

if TYPE_CHECKING:  # adapter_option builds the Annotated at runtime; the checker reads its type
    Adapters = list[str] | None
else:
    Adapters = adapter_option(
        "A local adapter (folder or Hub id) served under its folder's name (repeatable)."
    )
VERDICT_STYLE = {"matches": "green", "differs": "red", "no-op": "red"}


def verify_cmd(
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint", metavar="URL", help="The OpenAI-compatible server to check.", show_default=False
        ),
    ],
    lora: Lora = None,
    adapter: Adapters = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="The base model for the reference (default: the first adapter's base_model_name_or_path).",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", show_default=False, help="A prompt (repeatable).")
    ] = None,
    prompts_file: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            help="Prompts file (text or JSONL; each prompt runs on every adapter). "
            "Default: five short built-in prompts.",
            show_default=False,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Greedy tokens compared per prompt.")
    ] = 16,
    dtype: Dtype = "auto",
    trust_remote_code: TrustRemoteCode = False,
    model: ServedModel = None,
    concurrency: Concurrency = 8,
    timeout: Timeout = 600.0,
    api_key: ApiKey = None,
    revision: Revision = None,
    token: Token = None,
) -> None:
    """Check that a server serves each adapter as trained: greedy tokens (and logprobs, where
    the server gives them) against adapterctl's own engine on the local base. Per adapter:
    "matches", "differs from the trained adapter" (with the first divergent token) or "is a
    no-op" (the base model's output). Exit 10 unless all match."""
    from adapterctl.core.generate.prompts import PromptSpec, collect_prompts
    from adapterctl.core.serve.client import EndpointOptions
    from adapterctl.core.serve.verify import DEFAULT_PROMPTS, run_verify
    from adapterctl.errors import NotServedError

    out = get_output()
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    pairs = served_adapters(lora, adapter, "verify")
    if not pairs:
        raise UsageError(
            "verify needs at least one served adapter",
            hint="--lora NAME=ADAPTER (the served name and the local adapter), or -a ADAPTER.",
        )
    if prompt or prompts_file:
        specs = collect_prompts(prompt or [], prompts_file, None)
    else:
        specs = [PromptSpec(str(i), p) for i, p in enumerate(DEFAULT_PROMPTS)]
    opts = EndpointOptions(endpoint, api_key=api_key, timeout=timeout)
    report = run_verify(
        opts,
        pairs,
        specs,
        base_ref=base,
        model=model,
        max_new_tokens=max_new_tokens,
        concurrency=concurrency,
        placement=placement(dtype, None, None, None, None, trust_remote_code),
        hub=hub_options(revision, token),
        on_step=out.info,
    )
    doc = report.to_dict()
    if report.ok:
        out.result(doc, lambda console: _render(console, report))
        return
    bad = [r for r in report.results if not r.ok]
    err = NotServedError(
        f"{len(bad)} of {len(report.results)} served adapters do not match: "
        + ", ".join(f"{r.name} {r.verdict}" for r in bad[:4])
        + (" ..." if len(bad) > 4 else ""),
        hint="`adapterctl check ADAPTER --engine ENGINE` says what an engine changes; serve "
        "with `adapterctl serve` to convert where needed.",
    )
    out.fail(doc, lambda console: _render(console, report), err)


def _render(console, report) -> None:
    from rich.table import Table
    from rich.text import Text

    from adapterctl.core.serve.verify import VERDICT_TEXT

    table = Table(show_lines=True)
    for col in ("served", "adapter", "verdict", "details"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        style = VERDICT_STYLE[r.verdict]
        details = [f"{r.prompts} prompts, {r.compared} compared"]
        if r.first_divergence is not None:
            details.append("first divergence: " + r.first_divergence.describe())
        if r.max_logprob_diff is not None:
            details.append(f"max |logprob difference| {r.max_logprob_diff:.2e}")
        if r.kl is not None:
            method = "" if r.kl["kl_method"] == "full" else f", {r.kl['kl_method']} estimate"
            details.append(
                f"KL mean {r.kl['kl_mean']:.3g} nats (max {r.kl['kl_max']:.3g}{method}), top-1 "
                f"{r.kl['top1_agreement']:.2%} over {r.kl['positions']} positions"
            )
        elif r.kl_note:
            details.append(r.kl_note)
        table.add_row(
            Text(r.name),
            Text(r.adapter),
            Text(VERDICT_TEXT[r.verdict], style=style),
            Text("\n".join(details)),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(
        "verify",
        epilog=examples(
            "adapterctl verify --endpoint http://127.0.0.1:8000 --lora upper=./upper-lora",
            "adapterctl verify --endpoint $URL --lora a=./lora-a -a ./lora-b --prompts eval.txt",
            "adapterctl --json verify --endpoint $URL --lora a=user/lora-a --dtype bfloat16 | jq",
        ),
    )(verify_cmd)
