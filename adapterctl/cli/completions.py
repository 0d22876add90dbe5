"""Shell completion scripts for bash, zsh and fish, generated from the app.

Regenerate the committed files with ``python -m adapterctl.cli.completions completions/``.
The scripts call ``adapterctl`` back with ``_ADAPTERCTL_COMPLETE`` set, so completions always
follow the installed version's commands and options. A script is made through the same public
protocol: ``_ADAPTERCTL_COMPLETE=source_<shell> adapterctl`` prints it (Typer's completion
support, which ``adapterctl --install-completion`` also uses).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SHELLS = {"bash": "adapterctl.bash", "zsh": "_adapterctl", "fish": "adapterctl.fish"}
COMPLETE_VAR = "_ADAPTERCTL_COMPLETE"


def completion_script(shell: str) -> str:
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}")
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        COMPLETE_VAR: f"source_{shell}",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "adapterctl"], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout


def write_all(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shell, name in SHELLS.items():
        (folder / name).write_text(completion_script(shell))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
