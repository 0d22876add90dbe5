"""``adapterctl push``: registered by the frame; built by its own issue."""

from __future__ import annotations

import typer

from adapterctl.errors import UnsupportedError


def push_cmd() -> None:
    """(not built yet)"""
    raise UnsupportedError("'push' is not built yet")


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)
