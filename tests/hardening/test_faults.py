"""Faults while writing an output (convert, merge): killed (SIGKILL, SIGINT) at random points,
disk full (RLIMIT_FSIZE), two runs into the same output at once. Afterwards the output folder is
absent or complete, leftovers are clearly named and removed by the next run, and the inputs are
untouched. Runs the real entry point in subprocesses."""

from __future__ import annotations

import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli

#: the one atomic-output helper names its temporary folders like this (io/folders/output_dir.py)
TEMP_MARK = ".adapterctl-tmp"


@pytest.fixture(scope="module")
def inputs(tiny_models, peft_adapter):
    return {"base": tiny_models["llama"],
            "lora": peft_adapter("llama", r=8, target_modules=["q_proj", "v_proj", "up_proj"])}


COMMANDS = {
    "convert": lambda i, out: ["convert", "--rank", "4", i["lora"], out],
    "merge": lambda i, out: ["merge", i["base"], i["lora"], "--output", out],
}
PARAMS = [pytest.param("convert"), pytest.param("merge")]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}


def _start(args, hook: str = "", preexec=None) -> subprocess.Popen:
    """The CLI in a subprocess, through the process's entry point (as the ``adapterctl`` script
    runs it); ``hook`` is Python run first (to place a fault precisely).

    Ctrl-C is held off until adapterctl's entry point is imported: before that, on a loaded
    machine, it would land in the interpreter's own start-up, which is Python's business."""
    code = (f"import signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n{hook}\n"
            "from adapterctl.cli.app import entry\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"sys.argv = ['adapterctl', *{[str(a) for a in args]!r}]\nentry()")
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def _digest(folder: Path) -> dict[str, str]:
    """Content hashes; a model card only needs to be there (merge's quotes the command line)."""
    return {p.relative_to(folder).as_posix():
            "present" if p.name == "README.md" else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, dest: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != dest.name)


def _check_after_fault(dest: Path, reference: dict, inputs: dict, before: dict) -> None:
    """Absent or complete; leftovers clearly named; inputs untouched."""
    if dest.exists():
        assert _digest(dest) == reference, "a partial output is visible"
    for name in _leftovers(dest.parent, dest):
        assert TEMP_MARK in name or name.endswith(".lock"), f"unclear leftover {name}"
    assert {k: _digest(v) for k, v in inputs.items()} == before


@pytest.fixture(scope="module")
def references(inputs, tmp_path_factory):
    """The complete output of each command, and the inputs' digests before any fault."""
    refs = {}
    for cmd in COMMANDS:
        out = tmp_path_factory.mktemp(f"ref-{cmd}") / "out"
        t0 = time.monotonic()
        res = run_cli(*COMMANDS[cmd](inputs, out))
        assert res.code == 0, res.stderr
        refs[cmd] = (_digest(out), time.monotonic() - t0)
    return refs, {k: _digest(v) for k, v in inputs.items()}


@pytest.mark.parametrize("cmd", PARAMS)
def test_killed_at_random_points(cmd, inputs, references, tmp_path):
    refs, before = references
    reference, duration = refs[cmd]
    rng = random.Random(f"kill-{cmd}")
    dest = tmp_path / "out"
    outcomes = []
    for trial in range(6):
        sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGINT
        proc = _start(COMMANDS[cmd](inputs, dest))
        time.sleep(rng.uniform(0.3, duration * 1.1))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        outcomes.append((sig.name, proc.returncode))
        if sig == signal.SIGINT and proc.returncode not in (0, -signal.SIGINT):
            assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        _check_after_fault(dest, reference, inputs, before)
        shutil.rmtree(dest, ignore_errors=True)  # the next trial starts from no output
    # the next run into the destination succeeds and clears what killed runs left behind
    res = run_cli(*COMMANDS[cmd](inputs, dest))
    assert res.code == 0, res.stderr
    assert _digest(dest) == reference and _leftovers(tmp_path, dest) == [], outcomes


KILL_BEFORE_PUBLISH = """
import os, signal
_rename, _replace = os.rename, os.replace
def _die(src, dst, *a, **k):
    if os.path.basename(str(dst)) == "out":
        os.kill(os.getpid(), signal.SIGKILL)
    return _rename(src, dst, *a, **k)
os.rename = os.replace = _die
"""


@pytest.mark.parametrize("cmd", PARAMS)
def test_killed_just_before_the_output_is_published(cmd, inputs, references, tmp_path):
    """The worst moment: everything written, the final rename not done. No output appears; the
    temporary folder is named clearly, and the next run removes it."""
    refs, before = references
    dest = tmp_path / "out"
    proc = _start(COMMANDS[cmd](inputs, dest), KILL_BEFORE_PUBLISH)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()
    left = _leftovers(tmp_path, dest)
    assert left and all(TEMP_MARK in n or n.endswith(".lock") for n in left), left
    res = run_cli(*COMMANDS[cmd](inputs, dest))
    assert res.code == 0, res.stderr
    assert _digest(dest) == refs[cmd][0] and _leftovers(tmp_path, dest) == []
    assert {k: _digest(v) for k, v in inputs.items()} == before


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("cmd", PARAMS)
def test_disk_full(cmd, inputs, references, tmp_path):
    refs, before = references
    dest = tmp_path / "out"
    proc = _start(COMMANDS[cmd](inputs, dest), preexec=_file_size_limit(2048))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err[-2000:]
    assert "cannot write" in err and "hint:" in err and "Traceback" not in err, err[-2000:]
    assert not dest.exists() and _leftovers(tmp_path, dest) == []
    assert {k: _digest(v) for k, v in inputs.items()} == before


@pytest.mark.parametrize("cmd", PARAMS)
def test_disk_full_keeps_the_previous_output_with_force(cmd, inputs, references, tmp_path):
    refs, _ = references
    dest = tmp_path / "out"
    assert run_cli(*COMMANDS[cmd](inputs, dest)).code == 0
    proc = _start([*COMMANDS[cmd](inputs, dest), "--force"], preexec=_file_size_limit(2048))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err[-2000:]
    assert _digest(dest) == refs[cmd][0] and _leftovers(tmp_path, dest) == []


@pytest.mark.parametrize("cmd", PARAMS)
def test_two_runs_into_the_same_output(cmd, inputs, references, tmp_path):
    """Started together: one writes the output, the other is refused cleanly (the output is
    locked by the first run, or already exists when it looks)."""
    refs, _ = references
    dest = tmp_path / "out"
    procs = [_start(COMMANDS[cmd](inputs, dest)) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (2, 9), results
    loser = next(err for code, err in results if code != 0)
    assert "another adapterctl run is writing" in loser or "already exists" in loser, loser
    assert _digest(dest) == refs[cmd][0] and _leftovers(tmp_path, dest) == []


@pytest.mark.parametrize("cmd", PARAMS)
def test_output_locked_by_another_run_is_refused(cmd, inputs, tmp_path):
    import fcntl

    dest = tmp_path / "out"
    with open(tmp_path / ".out.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running adapterctl holds it
        res = run_cli(*COMMANDS[cmd](inputs, dest))
    assert res.code == 9 and "another adapterctl run is writing" in res.stderr, res.stderr
    assert not dest.exists()


def test_ctrl_c_in_a_command_reports_interrupted(monkeypatch):
    """Found here: Typer turns KeyboardInterrupt into a silent return of 130, so Ctrl-C printed
    nothing, and with --json no JSON document at all."""
    import adapterctl.io.hub.resolve as resolve
    from tests.helpers import invoke

    def interrupted(ref, kind):
        raise KeyboardInterrupt

    monkeypatch.setattr(resolve, "resolve_local", interrupted)
    res = invoke("--json", "inspect", "x/y")
    assert res.code == 130 and res.json["error"]["type"] == "interrupted"
    res = invoke("inspect", "x/y")
    assert res.code == 130 and "error: interrupted" in res.stderr


def test_next_run_restores_an_output_whose_force_swap_was_cut_short(tmp_path):
    """Killed between the two renames of a --force swap: the output is missing, the previous one
    sits in .out.adapterctl-old-*/x and the new one in .out.adapterctl-tmp-*. The next run puts
    the previous output back (then refuses it without --force) and removes the rest."""
    from adapterctl.errors import OutputExistsError
    from adapterctl.io.folders.output_dir import write_output_dir

    (tmp_path / ".out.adapterctl-old-k1" / "x").mkdir(parents=True)
    (tmp_path / ".out.adapterctl-old-k1" / "x" / "model.safetensors").write_text("previous")
    (tmp_path / ".out.adapterctl-tmp-k2").mkdir()
    (tmp_path / ".out.adapterctl-tmp-k2" / "half").write_text("new, maybe partial")
    (tmp_path / ".other.adapterctl-tmp-k3").mkdir()  # another output's: not ours to touch
    with pytest.raises(OutputExistsError):
        with write_output_dir(tmp_path / "out", inputs=()):
            pass
    assert (tmp_path / "out" / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.adapterctl-tmp-k3", "out"]
