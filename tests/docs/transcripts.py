"""Executable transcripts: the ```console blocks of docs/**/*.md and README.md.

A block is a list of commands (lines starting ``$ ``) each followed by the output it printed
(stdout and stderr together, as a terminal shows them). The blocks of one page run in order in one
temporary working folder that holds a copy of ``examples/``, so a later block can use what an
earlier one wrote. Commands run in bash with ``adapterctl`` on PATH (this checkout), fixed
``COLUMNS`` and ``NO_COLOR``.

Markers go in the fence's info string, after ``console``:

- ``requires=vllm`` (or ``llama.cpp``, ``mlx``, comma-separated): runs only where the interop
  tests' engine variables are set (``ADAPTERCTL_VLLM_PYTHON``...); skipped with a reason elsewhere.
- ``setup=moe`` (comma-separated): tiny models and adapters from tests/docs/fixtures.py, built
  once into the page's folder before the block runs.
- ``ready=URL``: the block starts a server in the background (a command ending in `` &``, its
  output kept in a log file of the page's folder, not in the transcript); after the block the
  test waits until URL answers, and the server runs until the page's last block has run.
- ``rerun=N``: llama.cpp's tools print through an asynchronous logger that they leak at exit
  (common/log.cpp), so on a busy machine the end of their output can be lost; a block of such a
  tool (idempotent commands, ``requires=llama.cpp``) that differs runs again, up to N more times,
  and passes when one run prints the transcript. A real difference fails every run.
- ``norun="reason"``: never run (an illustration, e.g. a push to the real Hub); the reason is
  required, and there are few such blocks.

Outputs are compared after a few masks (timings, temporary paths, versions), never otherwise
relaxed. ``python -m pytest tests/docs --update`` rewrites the blocks with the real output.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLUMNS = "100"
SEP = "@@adapterctl-transcript-end-of-command@@"
#: the examples' files' mtime in a page's folder (serve's and deploy's copies are named from it)
EXAMPLES_MTIME = 1_767_225_600  # 2026-01-01

#: engine -> the environment variable that points at it (as tests/interop read them)
ENGINES = {
    "vllm": "ADAPTERCTL_VLLM_PYTHON",
    "llama.cpp": "ADAPTERCTL_LLAMA_CPP",
    "mlx": "ADAPTERCTL_MLX_PYTHON",
    "sglang": "ADAPTERCTL_SGLANG_PYTHON",
    "ray": "ADAPTERCTL_RAY_PYTHON",
}

_FENCE = re.compile(r"^(`{3,})(.*)$")
_OPTION = re.compile(r'(\w[\w.-]*)=("[^"]*"|\S+)')

#: (pattern, replacement) applied to expected and actual output before comparing
MASKS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"/tmp/[^\s'\"),]+"), "<tmp>"),
    (re.compile(r'("(?:[a-z_]*seconds|elapsed_s|[a-z_]*_s|[a-z_]*per_second)": )-?[\d.e+-]+'), r"\1<n>"),
    (re.compile(r"\b\d+(?:\.\d+)? tokens/s\b"), "<n> tokens/s"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)?s\b"), "<t>s"),
    (re.compile(r"(adapterctl,? (?:version )?v?)\d+\.\d+\.\d+\S*"), r"\1<version>"),
    (re.compile(r"\(\d+ threads\)"), "(<n> threads)"),  # merge's default: the machine's cores
]


@dataclass
class Command:
    line: str  # the command, without "$ "
    output: str  # the expected output, lines joined by "\n", no trailing newline


@dataclass
class Block:
    path: Path
    start: int  # index of the opening fence line
    end: int  # index of the closing fence line
    fence: str
    info: str
    commands: list[Command] = field(default_factory=list)

    @property
    def options(self) -> dict[str, str]:
        return {k: v.strip('"') for k, v in _OPTION.findall(self.info)}

    @property
    def requires(self) -> list[str]:
        value = self.options.get("requires", "")
        return [e for e in value.split(",") if e]

    @property
    def ready(self) -> str | None:
        return self.options.get("ready")

    @property
    def reruns(self) -> int:
        value = self.options.get("rerun", "0")
        if not value.isdigit() or (int(value) and ("llama.cpp" not in self.requires or self.ready)):
            raise ValueError(f"{self.where()}: rerun= takes a count, on a block that requires=llama.cpp "
                             "and starts no server")
        return int(value)

    @property
    def norun(self) -> str | None:
        return self.options.get("norun")

    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.start + 1}"


def fenced_blocks(text: str) -> list[tuple[int, int, str, str, list[str]]]:
    """Every fenced block of a Markdown text: (start, end, fence, info, body lines)."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).strip()
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        blocks.append((i, j, fence, info, lines[i + 1 : j]))
        i = j + 1
    return blocks


def console_blocks(path: Path) -> list[Block]:
    """The ```console blocks of a page that hold at least one command."""
    result = []
    for start, end, fence, info, body in fenced_blocks(path.read_text()):
        if info.split(" ", 1)[0] != "console":
            continue
        block = Block(path, start, end, fence, info)
        outputs: list[list[str]] = []
        for line in body:
            if line.startswith("$ "):
                block.commands.append(Command(line[2:], ""))
                outputs.append([])
            elif outputs:
                outputs[-1].append(line)
        for cmd, lines in zip(block.commands, outputs):
            cmd.output = "\n".join(lines).rstrip("\n")
        if block.commands:
            result.append(block)
    return result


def pages() -> list[Path]:
    """README.md and every page of the docs site, in a stable order (not the generated CLI
    reference, whose ``$ adapterctl [OPTIONS]`` lines are usage, not transcripts)."""
    generated = {REPO / "docs/reference/cli.md"}
    return [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if p not in generated)]


def mask(text: str) -> str:
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text


def missing_engines(block: Block) -> list[str]:
    unknown = [e for e in block.requires if e not in ENGINES]
    if unknown:
        raise ValueError(f"{block.where()}: unknown requires= engine(s) {unknown}; known: {sorted(ENGINES)}")
    return [f"{e} (${ENGINES[e]} unset)" for e in block.requires if not os.environ.get(ENGINES[e])]


class Workdir:
    """One page's working folder: a copy of examples/, adapterctl on PATH, background jobs killed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
        for f in (root / "examples").rglob("*"):  # a checkout's times vary; copies are named by them
            os.utime(f, (EXAMPLES_MTIME, EXAMPLES_MTIME), follow_symlinks=False)
        bindir = root.parent / f"{root.name}-bin"
        bindir.mkdir(exist_ok=True)
        shim = bindir / "adapterctl"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m adapterctl "$@"\n')
        shim.chmod(0o755)
        python = bindir / "python"  # the python this test runs in (llama.cpp's converter needs torch)
        python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        python.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "COLUMNS": COLUMNS,
            "LINES": "50",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # vLLM's CPU build on a shared machine: no pinning to cores others use (tests/interop)
            "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
        }
        self.jobs = 0  # background commands started so far (logs .transcript-job-N.log)
        self.groups: list[int] = []
        self.fixtures: set[str] = set()

    def setup(self, block: Block) -> None:
        """Build the fixtures the block names (``setup=moe,vlm``: tests/docs/fixtures.py), once."""
        for name in [n for n in block.options.get("setup", "").split(",") if n]:
            if name in self.fixtures:
                continue
            proc = subprocess.run([sys.executable, "-m", "tests.docs.fixtures", name], cwd=self.root,
                                  env=self.env, capture_output=True, text=True, timeout=900)
            if proc.returncode:
                raise RuntimeError(f"{block.where()}: fixture {name!r} failed:\n{proc.stderr[-3000:]}")
            self.fixtures.add(name)

    def run(self, block: Block, timeout: float = 900) -> list[str]:
        """Run the block's commands in one bash; each command's output, made relative."""
        self.setup(block)
        script = ["set +e"]
        background: list[Path] = []
        for cmd in block.commands:
            line = cmd.line
            if line.rstrip().endswith("&") and not line.rstrip().endswith("&&"):
                # a server: its output into a log (an open pipe would hold this run open)
                self.jobs += 1
                log = self.root / f".transcript-job-{self.jobs}.log"
                background.append(log)
                line = f"( {line.rstrip()[:-1]} ) > {shlex.quote(str(log))} 2>&1 & echo $! > {shlex.quote(str(log))}.pid"
            script += [line, f"__rc=$?; printf '\\n%s\\n' '{SEP}'; (exit $__rc)"]
        # the output into a file rather than a pipe: a tool whose logger thread races its exit
        # (llama.cpp's, see rerun=) loses far less of it there (tests/interop/gguf_harness.run_llama)
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=self.root, env=self.env,
                                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
            self.groups.append(proc.pid)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                proc.wait()
            output.seek(0)
            out = output.read().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        parts = out.split(f"\n{SEP}\n")
        parts += [""] * (len(block.commands) - len(parts))
        if block.ready:
            self.wait_ready(block, background)
        return [self.relative(p) for p in parts[: len(block.commands)]]

    def wait_ready(self, block: Block, logs: list[Path], timeout: float = 600) -> None:
        """Wait until ``block.ready`` answers; fail with the server's log if it exits first."""
        if not logs:
            raise ValueError(f"{block.where()}: ready= names a URL but no command ends in ' &'")
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(block.ready, timeout=5).read()
                return
            except OSError:
                pass
            alive = []
            for log in logs:
                pid = Path(f"{log}.pid")
                try:
                    os.kill(int(pid.read_text()), 0)
                    alive.append(log)
                except (OSError, ValueError):
                    pass
            if not alive or time.monotonic() > deadline:
                why = "exited" if not alive else f"did not answer in {timeout:.0f} s"
                tails = "\n".join(log.read_text(errors="replace")[-4000:] for log in logs if log.is_file())
                raise RuntimeError(f"{block.where()}: the server {why} ({block.ready}):\n{tails}")
            time.sleep(2)

    def relative(self, text: str) -> str:
        """Temporary and home paths as a reader would write them (relative, ``~``)."""
        text = text.replace(f"{self.root}/", "").replace(str(self.root), ".")
        text = text.replace(f"{self.root.resolve()}/", "").replace(str(self.root.resolve()), ".")
        text = text.replace(str(Path.home()), "~")
        return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

    def kill(self) -> None:
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.groups.clear()


def differences(block: Block, actual: list[str]) -> list[str]:
    """A readable report of each command whose masked output differs."""
    report = []
    for cmd, got in zip(block.commands, actual):
        if mask(cmd.output) != mask(got):
            report.append(f"$ {cmd.line}\n--- documented\n{cmd.output}\n--- actual\n{got}")
    return report


def run_until_same(workdir: Workdir, block: Block) -> tuple[list[str], list[str]]:
    """Run the block; while its output differs, again, up to ``rerun=`` more times.
    Returns the last run's outputs and their differences (empty where one run matched)."""
    actual = workdir.run(block)
    report = differences(block, actual)
    for _ in range(block.reruns if report else 0):
        actual = workdir.run(block)
        report = differences(block, actual)
        if not report:
            break
    return actual, report


def rewrite(path: Path, updates: list[tuple[Block, list[str]]]) -> None:
    """Replace each block's body with its commands and their actual output."""
    lines = path.read_text().split("\n")
    for block, actual in sorted(updates, key=lambda u: -u[0].start):
        body = []
        for cmd, got in zip(block.commands, actual):
            # keep the documented text where only masked parts (timings, temporary names) differ
            text = cmd.output if mask(cmd.output) == mask(got) else got
            body += [f"$ {cmd.line}", *(text.split("\n") if text else [])]
        lines[block.start + 1 : block.end] = body
    path.write_text("\n".join(lines))
