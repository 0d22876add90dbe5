"""``adapterctl convert``: registered by the frame; built by its own issue."""

from __future__ import annotations

import typer

from adapterctl.errors import UnsupportedError


def convert_cmd() -> None:
    """(not built yet)"""
    raise UnsupportedError("'convert' is not built yet")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
