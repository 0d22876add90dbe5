"""``adapterctl attach``: registered by the frame; built by its own issue."""

from __future__ import annotations

import typer

from adapterctl.errors import UnsupportedError


def attach_cmd() -> None:
    """(not built yet)"""
    raise UnsupportedError("'attach' is not built yet")


def register(app: typer.Typer) -> None:
    app.command("attach")(attach_cmd)
