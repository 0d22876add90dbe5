"""Shared test helpers: running the CLI, writing adapters by hand, comparing tensors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd=None) -> CliResult:
    """Run ``python -m adapterctl ARGS`` in a subprocess (the real entry point)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "COLUMNS": "200", "NO_COLOR": "1"}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "adapterctl", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter from the repository (stdout and stderr captured): what
    a process imports, or how it ends, where the in-process CLI runner cannot tell."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


def invoke(*args: str) -> CliResult:
    """Run the CLI in this process (fast; torch stays imported between calls)."""
    from adapterctl.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    on_interrupt = signal.getsignal(signal.SIGINT)  # main ignores Ctrl-C once it is done
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            signal.signal(signal.SIGINT, on_interrupt)
    return CliResult(code, out.getvalue(), err.getvalue())


def write_adapter(path: Path, config: dict, tensors: dict, metadata: dict | None = None) -> Path:
    """Write an adapter folder by hand: adapter_config.json plus adapter_model.safetensors."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
           "target_modules": ["q_proj", "v_proj"], "bias": "none", "use_rslora": False,
           "use_dora": False, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {},
           "modules_to_save": None, "fan_in_fan_out": False, "base_model_name_or_path": None,
           **config}
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors"),
              metadata=metadata or {"format": "pt"})
    return path


def max_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def app_commands() -> list[str]:
    """Every command of the app, from the app itself (a new command is covered without a list
    to update)."""
    import typer

    from adapterctl.cli.app import _register_commands, app

    _register_commands(["--help"])
    return list(typer.main.get_command(app).commands)
