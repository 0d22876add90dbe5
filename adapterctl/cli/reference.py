"""The whole command tree as one click command, for the docs site's CLI reference.

mkdocs-click renders ``docs/reference/cli.md`` from ``command`` (every command registered, as for
``--help``), so the reference is the app itself and cannot drift from it.
"""

from __future__ import annotations

import typer

from adapterctl.cli.app import _register_commands, app

_register_commands([])
command = typer.main.get_command(app)
