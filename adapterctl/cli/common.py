"""Options and helpers shared by several commands (kept free of heavy imports)."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterctl.errors import OutputExistsError

PANEL_HUB = "Hub"
PANEL_BASE = "Base model placement"
PANEL_OUTPUT = "Output"

RevisionOpt = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) of "
                           "the adapter/model; also `user/repo@rev`.", rich_help_panel=PANEL_HUB)
TokenOpt = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN or the saved login). "
                        "Never printed.", rich_help_panel=PANEL_HUB, show_default=False)


EXIT_CODES_LINE = (
    "**Exit codes**: 0 success, 1 internal error, 2 usage, 3 not found, 4 invalid input, "
    "5 unsupported, 6 incompatible with the base, 7 missing dependency, 8 Hub/network, 9 I/O, "
    "130 interrupted (details: `adapterctl --help`)."
)


def examples(*lines: str) -> str:
    """A command's epilog: example invocations and the exit codes (Typer's markdown mode)."""
    return "**Examples**\n\n" + "\n".join(f"* `{line}`" for line in lines) + "\n\n" + EXIT_CODES_LINE


TrustRemoteCodeOpt = typer.Option(False, "--trust-remote-code", help="Let transformers run the "
                                  "Python code of a model repo whose config.json has auto_map "
                                  "(off by default: read that code first).",
                                  rich_help_panel=PANEL_BASE)
EndpointOpt = typer.Option(None, "--endpoint", help="Hub URL (default: HF_ENDPOINT, else "
                           "https://huggingface.co).", rich_help_panel=PANEL_HUB, show_default=False)


def hub_options(revision: str | None, token: str | None, endpoint: str | None = None):
    """Hub settings for io.resolve/io.hub: messages go to stderr, bars follow --quiet."""
    from adapterctl.cli.output import get_output
    from adapterctl.io.resolve import HubOptions

    out = get_output()
    return HubOptions(revision=revision, token=token, endpoint=endpoint,
                      progress=not out.settings.quiet, log=out.info)


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing non-empty output unless --force."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        raise OutputExistsError(f"{path}: already exists", hint="Choose another output, or pass --force "
                                "to replace it.")
