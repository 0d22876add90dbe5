"""Shell completion scripts for bash, zsh and fish, generated from the app.

Regenerate the committed files with ``python -m adapterctl.cli.completions completions/``.
The scripts call ``adapterctl`` back with ``_ADAPTERCTL_COMPLETE`` set, so completions always
follow the installed version's commands and options.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "adapterctl.bash", "zsh": "_adapterctl", "fish": "adapterctl.fish"}


def completion_script(shell: str) -> str:
    import typer
    from typer._click.shell_completion import get_completion_class
    from typer._completion_classes import completion_init

    from adapterctl.cli.app import app

    completion_init()
    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"unknown shell {shell!r}")
    command = typer.main.get_command(app)
    return cls(command, {}, "adapterctl", "_ADAPTERCTL_COMPLETE").source()


def write_all(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shell, name in SHELLS.items():
        (folder / name).write_text(completion_script(shell))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
