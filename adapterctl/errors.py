"""The one exception hierarchy of adapterctl (stdlib only).

Every failure a user can act on is an :class:`AdapterctlError` subclass with its own exit code. The
CLI prints ``message`` and ``hint`` (never a traceback unless ``--debug``); with ``--json`` it prints
``{"ok": false, "error": {"type", "message", "hint", "exit_code"}}``. Anything else that escapes is a
bug and exits 1.

The exit codes are described once, here (:data:`EXIT_TABLE`): ``adapterctl --help``, every
command's epilog and the docs site's table (:func:`exit_code_table`; refresh it with
``python -m adapterctl.errors docs/reference/exit-codes.md``) are generated from it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: code -> (short name for command epilogs, full meaning), in the order the docs list them
EXIT_TABLE: dict[int, tuple[str, str]] = {
    0: ("success", "success"),
    1: ("internal error", "internal error (a bug: rerun with `--debug` and report it)"),
    2: ("usage", "usage error (bad option or argument, output exists without `--force`)"),
    3: ("not found", "not found (file, directory, Hub repo, revision, file in a Hub repo)"),
    4: ("invalid input", "invalid input (adapter or model files that are broken or inconsistent)"),
    5: ("unsupported", "unsupported feature (a LoRA variant or option adapterctl does not implement)"),
    6: (
        "incompatible with the base",
        "incompatible with the base model (missing modules, shape mismatch, an adapter none of whose "
        "modules lands in the base, vision-tower modules on a text-only base)",
    ),
    7: ("missing dependency", "missing dependency or hardware (e.g. bitsandbytes, CUDA)"),
    8: (
        "Hub/network",
        "Hub or network error (gated repo, token missing or refused, no write access, connection, "
        "server errors, network needed while offline); `--endpoint`: refused connection, timeout, "
        "server errors after retries, malformed answers",
    ),
    9: ("I/O", "I/O error (disk full, permission denied, output locked by another run)"),
    10: (
        "not served as trained",
        "an engine will not serve an adapter as trained: `check` gave a verdict `changes` or "
        "`refuses`; `verify` found a served adapter that differs or is a no-op; `eval`: a copy past "
        "`--max-kl` or `--min-top1`",
    ),
    130: ("interrupted", "interrupted (Ctrl-C)"),
}
#: code -> full meaning
EXIT_CODES: dict[int, str] = {code: meaning for code, (_, meaning) in EXIT_TABLE.items()}


def exit_code_table() -> str:
    """The exit codes as the docs' markdown table (docs/reference/exit-codes.md)."""
    rows = [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(["| code | meaning |", "|---|---|", *rows]) + "\n"


def exit_codes_line() -> str:
    """The exit codes in one line, for a command's epilog (the full text is in ``--help``)."""
    return (
        "**Exit codes**: "
        + ", ".join(f"{code} {short}" for code, (short, _) in EXIT_TABLE.items())
        + " (details: `adapterctl --help`)."
    )


_README_TABLE = re.compile(r"(## Exit codes\n\n)(\| code \| meaning \|\n(?:\|.*\|\n)+)")


def refresh_readme(path: Path) -> bool:
    """Rewrite the exit-code table under ``## Exit codes`` in ``path``; True when it changed."""
    text = path.read_text()
    new, n = _README_TABLE.subn(lambda m: m.group(1) + exit_code_table(), text, count=1)
    if n != 1:
        raise ValueError(f"{path}: no '## Exit codes' table found")
    if new != text:
        path.write_text(new)
    return new != text


class AdapterctlError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        return {
            "type": self.kind,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(AdapterctlError):
    exit_code = 2
    kind = "usage"


class OutputExistsError(UsageError):
    kind = "output_exists"


class OutputIsInputError(UsageError):
    """An output that is, contains or sits inside an input of the same command: refused even with
    --force, which replaces an old output, never an input."""

    kind = "output_is_input"


class NotFoundError(AdapterctlError):
    exit_code = 3
    kind = "not_found"


class InvalidAdapterError(AdapterctlError):
    """The adapter (or a model file) is malformed: broken JSON, truncated safetensors, bad shapes."""

    exit_code = 4
    kind = "invalid_input"


class UnsupportedError(AdapterctlError):
    exit_code = 5
    kind = "unsupported"


class IncompatibleBaseError(AdapterctlError):
    exit_code = 6
    kind = "incompatible_base"


class MissingDependencyError(AdapterctlError):
    exit_code = 7
    kind = "missing_dependency"


class HubError(AdapterctlError):
    exit_code = 8
    kind = "hub"


class EndpointError(AdapterctlError):
    """An OpenAI-compatible server (``--endpoint``) cannot be reached, refused a request, timed out
    or answered something that is not a completion. Same exit code as the Hub's network errors."""

    exit_code = 8
    kind = "endpoint"


class OutputIOError(AdapterctlError):
    exit_code = 9
    kind = "io"


class NotServedError(AdapterctlError):
    """``check``: some engine changes or refuses an adapter; ``verify``: a served adapter differs
    from the trained one or is a no-op (CI pipelines gate on this code)."""

    exit_code = 10
    kind = "not_served"


class Interrupted(AdapterctlError):
    exit_code = 130
    kind = "interrupted"


if __name__ == "__main__":  # python -m adapterctl.errors [PAGE]: refresh the docs' exit-code table
    changed = refresh_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reference/exit-codes.md"))
    print("updated" if changed else "already current")
