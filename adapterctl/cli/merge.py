"""``adapterctl merge``: registered by the frame; built by its own issue."""

from __future__ import annotations

import typer

from adapterctl.errors import UnsupportedError


def merge_cmd() -> None:
    """(not built yet)"""
    raise UnsupportedError("'merge' is not built yet")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
