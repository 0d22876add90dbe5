"""``adapterctl generate``: registered by the frame; built by its own issue."""

from __future__ import annotations

import typer

from adapterctl.errors import UnsupportedError


def generate_cmd() -> None:
    """(not built yet)"""
    raise UnsupportedError("'generate' is not built yet")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
