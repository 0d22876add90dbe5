"""Problems found while checking an adapter: reported by inspect, raised by merge and the engine
(:func:`as_error` turns one into its AdapterctlError). A problem names the error class it is, never
an exit code: the codes live in :mod:`adapterctl.errors` alone."""

from __future__ import annotations

from dataclasses import dataclass

from adapterctl.errors import AdapterctlError, InvalidAdapterError


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (the adapter cannot be used as is) | "warning"
    code: str  # stable machine-readable id, e.g. "rank_mismatch"
    message: str
    hint: str | None = None
    #: the error this problem is when it makes the adapter unusable (its class holds the exit code)
    error: type[AdapterctlError] = InvalidAdapterError

    @property
    def exit_code(self) -> int:
        """The exit code of a command this problem stops (0 for a warning)."""
        return self.error.exit_code if self.severity == "error" else 0

    @property
    def text(self) -> str:
        """Message and hint as one line, for a warning shown without its own hint line."""
        return f"{self.message}. {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


def error(
    code: str, message: str, hint: str | None = None, error: type[AdapterctlError] = InvalidAdapterError
) -> Problem:
    return Problem("error", code, message, hint, error)


def warning(code: str, message: str, hint: str | None = None) -> Problem:
    return Problem("warning", code, message, hint)


def as_error(problem: Problem, prefix: str | None = None) -> AdapterctlError:
    """The error to raise for ``problem``; ``prefix`` names the adapter."""
    return problem.error(f"{prefix}: {problem.message}" if prefix else problem.message, hint=problem.hint)


def raise_first_error(problems: list[Problem], prefix: str | None = None) -> None:
    """Raise the first error problem, if any (warnings are the caller's to report)."""
    for p in problems:
        if p.severity == "error":
            raise as_error(p, prefix)
