"""Options and helpers shared by several commands (kept free of heavy imports)."""

from __future__ import annotations

import typer

from adapterctl.errors import EXIT_CODES

PANEL_HUB = "Hub"
PANEL_BASE = "Base model placement"
PANEL_OUTPUT = "Output"

RevisionOpt = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) of "
                           "the adapter/model; also `user/repo@rev`.", rich_help_panel=PANEL_HUB)
TokenOpt = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN or the saved login). "
                        "Never printed.", rich_help_panel=PANEL_HUB, show_default=False)


#: short names of the exit codes for command epilogs (the full text is in `adapterctl --help`)
_SHORT = {1: "internal error", 2: "usage", 3: "not found", 4: "invalid input", 5: "unsupported",
          6: "incompatible with the base", 7: "missing dependency", 8: "Hub/network", 9: "I/O",
          130: "interrupted"}
EXIT_CODES_LINE = "**Exit codes**: " + ", ".join(
    f"{code} {_SHORT.get(code, text)}" for code, text in EXIT_CODES.items()
) + " (details: `adapterctl --help`)."


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
    from adapterctl.io.hub_ref import HubOptions

    out = get_output()
    return HubOptions(revision=revision, token=token, endpoint=endpoint,
                      progress=not out.settings.quiet, log=out.info)
