"""``adapterctl push``: publish an adapter (or a merged model) folder to the Hub, validated first,
with a model card. Never imports torch or transformers."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterctl.cli.common import PANEL_HUB, EndpointOpt, TokenOpt, examples, hub_options
from adapterctl.cli.output import get_output, human_bytes

PANEL_FILES = "Files"


def push_cmd(
    folder: Path = typer.Argument(..., help="Adapter folder (adapter_config.json) or merged model "
                                  "folder (config.json)."),
    repo_id: str = typer.Argument(..., help="Hub repo to push to: user/repo (created if missing)."),
    revision: str = typer.Option(None, "--revision", help="Branch to push to (created from main "
                                 "if missing).", rich_help_panel=PANEL_HUB),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (when "
                                 "this push creates it).", rich_help_panel=PANEL_HUB),
    message: str = typer.Option(None, "--message", "-m", help="Commit message.",
                                rich_help_panel=PANEL_HUB),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of "
                                   "committing to the branch.", rich_help_panel=PANEL_HUB),
    base_model: str = typer.Option(None, "--base-model", help="Base model id for the card "
                                   "(default: the card's, else the adapter config's).",
                                   rich_help_panel=PANEL_FILES),
    include: list[str] = typer.Option([], "--include", help="Also upload files matching this "
                                      "glob (repeatable).", rich_help_panel=PANEL_FILES),
    exclude: list[str] = typer.Option([], "--exclude", help="Do not upload files matching this "
                                      "glob (repeatable).", rich_help_panel=PANEL_FILES),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded, sizes and "
                                 "the card; change nothing.", rich_help_panel=PANEL_FILES),
    token: str = TokenOpt,
    endpoint: str = EndpointOpt,
) -> None:
    """Upload an adapter or merged model folder to the Hub, with a README model card."""
    from adapterctl.core.publish.push import plan_push
    from adapterctl.io.hub_ref import looks_like_hub_id
    from adapterctl.io.hub_upload import Upload, fetch_card, push_commit

    out = get_output()
    if not looks_like_hub_id(repo_id) or "@" in repo_id:
        from adapterctl.errors import UsageError

        raise UsageError(f"{repo_id!r} is not a Hub repo id", hint="Use user/repo (and --revision "
                         "for a branch).")
    hub = hub_options(revision, token, endpoint)
    plan = plan_push(folder, repo_id, include=include, exclude=exclude, base_model=base_model,
                     remote_card=lambda: fetch_card(repo_id, revision, hub))
    for w in plan.warnings:
        out.warn(w)
    files = [{"path": f.path_in_repo, "size": f.size} for f in plan.files]
    if dry_run:
        data = {"dry_run": True, "repo": repo_id, "revision": revision or "main", "kind": plan.kind,
                "base_model": plan.base_model, "files": files, "total_bytes": plan.total_bytes,
                "card": plan.card}
        return out.result(data, lambda console: _render_dry_run(console, plan))
    uploads = [Upload(f.path_in_repo, f.local, plan.card.encode() if f.local is None else None)
               for f in plan.files]
    with out.status(f"pushing {len(uploads)} files ({human_bytes(plan.total_bytes)}) to {repo_id}"):
        res = push_commit(repo_id, uploads, hub, message=message or _default_message(plan),
                          private=private, create_pr=create_pr)
    data = {"repo": res.repo_id, "revision": res.revision, "commit_id": res.commit_id,
            "commit_url": res.commit_url, "pr_url": res.pr_url, "changed": res.changed,
            "created_repo": res.created_repo, "created_branch": res.created_branch, "files": files}
    out.result(data, lambda console: _render(console, res))


def _default_message(plan) -> str:
    what = "LoRA adapter" if plan.kind == "adapter" else "merged model"
    return f"Upload {what} with adapterctl"


def _render_dry_run(console, plan) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"dry run: would upload to {plan.repo_id} ({plan.kind})", title_justify="left")
    t.add_column("file")
    t.add_column("size", justify="right")
    for f in plan.files:
        t.add_row(escape(f.path_in_repo) + ("" if f.local else " (generated)"), human_bytes(f.size))
    t.add_row("[bold]total[/bold]", human_bytes(plan.total_bytes))
    console.print(t)
    if plan.card is not None:
        console.print("[bold]README.md[/bold]:")
        console.print(plan.card, markup=False, highlight=False)


def _render(console, res) -> None:
    if not res.changed:
        console.print(f"No changes: {res.repo_id}@{res.revision} already holds these files; no new "
                      f"commit ({res.commit_id[:12]}).", markup=False)
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
