"""The whole command tree, every command registered, for the docs site's CLI reference.

``docs/reference/cli.md`` is Typer's own Markdown of this app (``python -m adapterctl.cli.reference``
rewrites it; ``tests/docs/test_docs_checks.py`` fails when it differs), so the reference is the
app's ``--help`` and cannot drift from it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapterctl.cli.app import _register_commands, app

_register_commands([])

__all__ = ["app", "render"]  # Typer's docs generator finds the app as this module's ``app``

PAGE = "docs/reference/cli.md"
TITLE = "CLI reference"


def render() -> str:
    """The reference page, as Typer's ``utils docs`` writes it for this module's ``app``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "typer",
            "adapterctl.cli.reference",
            "utils",
            "docs",
            "--name",
            "adapterctl",
            "--title",
            TITLE,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


if __name__ == "__main__":  # python -m adapterctl.cli.reference [PAGE]: refresh the page
    Path(sys.argv[1] if len(sys.argv) > 1 else PAGE).write_text(render())
    print(f"wrote {sys.argv[1] if len(sys.argv) > 1 else PAGE}")
