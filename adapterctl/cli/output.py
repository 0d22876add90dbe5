"""The one output helper: results on stdout, logs and progress on stderr, one JSON document with
``--json`` (also on failure)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from adapterctl.errors import AdapterctlError


@dataclass
class Settings:
    json: bool = False
    quiet: bool = False
    debug: bool = False
    secrets: list = field(default_factory=list, repr=False)  # tokens to redact from errors


if TYPE_CHECKING:
    from rich.console import Console


def _console(**kwargs) -> Console:
    """A Rich console, made on first use: a ``--json`` run (and every early exit) never imports
    Rich, a tenth of ``inspect``'s start-up."""
    from rich.console import Console

    class _Console(Console):
        """A reader that went away (``adapterctl inspect X | head``) is not an error: Rich would
        exit 1; we silence stdout and let the command end normally (exit 0)."""

        def on_broken_pipe(self) -> None:
            silence_stdout()
            raise BrokenPipeError

    return _Console(highlight=False, soft_wrap=True, **kwargs)


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class Output:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.emitted = False
        #: deprecation warnings of this run: also in the result's ``warnings``, where it has them
        self.deprecations: list[str] = []

    @cached_property
    def out(self) -> Console:
        return _console()

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    @property
    def json(self) -> bool:
        return self.settings.json

    # ----- results (stdout) ----------------------------------------------------------------
    def result(self, data: dict, render: Callable[[Console], None] | None = None, ok: bool = True) -> None:
        """Print the command's result: the JSON document, or the human rendering. ``ok=False``
        is a result that is also a failure (``data`` then holds an ``error`` object)."""
        self.emitted = True
        if self.settings.json:
            if self.deprecations and isinstance(data.get("warnings"), list):
                data = {**data, "warnings": [*data["warnings"], *self.deprecations]}
            sys.stdout.write(json.dumps({"ok": ok, **data}, default=_jsonable) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.out)

    def fail(self, data: dict, render: Callable[[Console], None] | None, err: AdapterctlError) -> NoReturn:
        """A result that is also a failure (``check`` with a verdict that is not 'serves', an
        ``inspect`` of an unusable adapter, a ``verify`` that differs, a ``generate`` cut short):
        the result as usual, its JSON document with ``"ok": false`` and ``error``; then ``err`` is
        raised, so the app prints it on stderr (once) and exits with its code."""
        for secret in self.settings.secrets:  # the JSON error is written here, before the app redacts
            err.message = err.message.replace(secret, "***")
            err.hint = err.hint.replace(secret, "***") if err.hint else err.hint
        self.result({**data, "error": err.to_dict()}, render, ok=False)
        raise err

    def line(self, text: str) -> None:
        """A plain result line on stdout (not in --json mode)."""
        if not self.settings.json:
            self.out.print(text, markup=False)

    def stream(self, text: str) -> None:
        """Result text on stdout as it is made (a streamed completion), flushed at once."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def json_line(self, data: dict) -> None:
        """One JSON line on stdout as each result is ready (``--jsonl``), flushed at once."""
        sys.stdout.write(json.dumps(data, default=_jsonable) + "\n")
        sys.stdout.flush()

    # ----- logs (stderr) -------------------------------------------------------------------
    def info(self, text: str, markup: bool = False) -> None:
        """A log line on stderr; ``text`` is plain (paths and prompts may hold '[...]')."""
        if not self.settings.quiet:
            self.err.print(text if markup else _escape(text))

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {_escape(text)}")

    def deprecated(self, text: str) -> None:
        """A deprecated spelling was used: a warning now, and in the result's ``warnings``."""
        if text not in self.deprecations:
            self.deprecations.append(text)
            self.warn(text)

    def error(self, err: AdapterctlError) -> None:
        if self.settings.json:
            if not self.emitted:
                sys.stdout.write(json.dumps({"ok": False, "error": err.to_dict()}) + "\n")
                self.emitted = True
            return
        self.err.print(f"[bold red]error:[/bold red] {_escape(err.message)}")
        if err.hint:
            self.err.print(f"[dim]hint:[/dim] {_escape(err.hint)}")

    @contextmanager
    def progress(self, description: str, total: float | None = None, unit: str = ""):
        """A progress bar with ETA on stderr; yields ``advance(n)``. Silent with --quiet or no TTY."""
        if self.settings.quiet or not self.err.is_terminal:
            yield lambda n=1, **kw: None
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        cols = [
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*cols, console=self.err, transient=True) as prog:
            task = prog.add_task(description, total=total)
            yield lambda n=1, **kw: prog.update(task, advance=n, **kw)

    @contextmanager
    def status(self, text: str):
        if self.settings.quiet or not self.err.is_terminal:
            yield
            return
        with self.err.status(text):
            yield


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


_OUTPUT: Output | None = None


def get_output() -> Output:
    global _OUTPUT
    if _OUTPUT is None:
        _OUTPUT = Output()
    return _OUTPUT


def set_output(out: Output) -> None:
    global _OUTPUT
    _OUTPUT = out
