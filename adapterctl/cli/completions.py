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
    """Regenerate the scripts in ``folder``, each replaced whole (they are this module's own
    outputs, so ``force``; the command reads no user file, so there is no input to keep)."""
    from adapterctl.io.folders.output_dir import write_output_file

    for shell, name in SHELLS.items():
        text = completion_script(shell)
        with write_output_file(folder / name, force=True, inputs=(), flag="FOLDER") as tmp:
            tmp.write_text(text)
            tmp.chmod(0o644)  # a temporary file is made private; the scripts are for every user


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
