"""``adapterctl push``: publish an adapter (or a merged model) folder to the Hub, validated first,
with a model card. Never imports torch or transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl.cli.options import PANEL_HUB, HubUrl, Token, deprecated, examples, hub_options
from adapterctl.cli.output import get_output, human_bytes
from adapterctl.errors import UsageError

PANEL_FILES = "Files"


def push_cmd(
    folder: Annotated[
        Path,
        typer.Argument(help="Adapter folder (adapter_config.json) or merged model folder (config.json)."),
    ],
    repo_id: Annotated[str, typer.Argument(help="Hub repo to push to: user/repo (created if missing).")],
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="Branch to push to (created from main if missing).", rich_help_panel=PANEL_HUB
        ),
    ] = None,
    private: Annotated[
        bool,
        typer.Option(
            "--private",
            help="Create the repo as private (when this push creates it).",
            rich_help_panel=PANEL_HUB,
        ),
    ] = False,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Commit message.", rich_help_panel=PANEL_HUB)
    ] = None,
    create_pr: Annotated[
        bool,
        typer.Option(
            "--create-pr",
            help="Open a pull request instead of committing to the branch.",
            rich_help_panel=PANEL_HUB,
        ),
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="Base model id for the card (default: the card's, else the adapter config's).",
            rich_help_panel=PANEL_FILES,
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            help="Also upload files matching this glob (repeatable).",
            rich_help_panel=PANEL_FILES,
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Do not upload files matching this glob (repeatable).",
            rich_help_panel=PANEL_FILES,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List what would be uploaded, sizes and the card; change nothing.",
            rich_help_panel=PANEL_FILES,
        ),
    ] = False,
    token: Token = None,
    hub_url: HubUrl = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", hidden=True)] = None,
) -> None:
    """Upload an adapter or merged model folder to the Hub, with a README model card."""
    from adapterctl.core.publish.push import PushReport, plan_push, push_plan

    out = get_output()
    if endpoint is not None:
        if hub_url is not None:
            raise UsageError("push --endpoint is the older spelling of --hub-url: give one of them")
        deprecated("push --endpoint URL", f"--hub-url {endpoint}")
    hub = hub_options(revision, token, hub_url or endpoint)
    plan = plan_push(
        folder,
        repo_id,
        include=include or [],
        exclude=exclude or [],
        base_model=base_model,
        hub=hub,
        compare=dry_run,  # a push checks its token before any request
    )
    for w in plan.warnings:
        out.warn(w)
    if dry_run:
        if not plan.remote.compared:
            out.warn(plan.remote.note or "the remote was not compared")
        report = PushReport(plan, revision)
        return out.result(report.to_dict(), lambda console: _render_dry_run(console, plan))
    with out.status(f"pushing {len(plan.files)} files ({human_bytes(plan.total_bytes)}) to {repo_id}"):
        report = push_plan(plan, hub, message=message, private=private, create_pr=create_pr)
    out.result(report.to_dict(), lambda console: _render(console, report.commit))


def _render_dry_run(console, plan) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"dry run: would upload to {plan.repo_id} ({plan.kind})", title_justify="left")
    t.add_column("file")
    t.add_column("size", justify="right")
    t.add_column("on the Hub")
    for f in plan.files:
        there = plan.remote.has(f.path_in_repo)
        t.add_row(
            escape(f.path_in_repo) + ("" if f.local else " (generated)"),
            human_bytes(f.size),
            "not compared" if there is None else "replaced" if there else "new",
        )
    t.add_row("[bold]total[/bold]", human_bytes(plan.total_bytes))
    console.print(t)
    if plan.card is not None:
        console.print("[bold]README.md[/bold]:")
        console.print(plan.card, markup=False, highlight=False)


def _render(console, res) -> None:
    if not res.changed:
        console.print(
            f"No changes: {res.repo_id}@{res.revision} already holds these files; no new "
            f"commit ({res.commit_id[:12]}).",
            markup=False,
        )
        return
    if res.pr_url:
        console.print(f"Opened pull request {res.pr_url}", markup=False)
    verb = "Created" if res.created_repo else "Updated"
    console.print(f"{verb} {res.repo_id}@{res.revision}: {res.commit_url}", markup=False)


def register(app: typer.Typer) -> None:
    app.command(
        "push",
        epilog=examples(
            "adapterctl push ./my-lora user/my-lora",
            "adapterctl push ./my-lora user/my-lora --revision v2 --private --dry-run",
            "adapterctl --json push ./merged user/my-merged --message 'merge r=16'",
        ),
    )(push_cmd)
