"""Problems found while checking an adapter: reported by inspect, raised by merge and the engine
(:func:`as_error` turns one into the AdapterctlError with its exit code)."""

from __future__ import annotations

from dataclasses import dataclass

from adapterctl.errors import (
    AdapterctlError,
    IncompatibleBaseError,
    InvalidAdapterError,
    MissingDependencyError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (the adapter cannot be used as is) | "warning"
    code: str  # stable machine-readable id, e.g. "rank_mismatch"
    message: str
    hint: str | None = None
    #: the exit code this problem maps to when it makes the adapter unusable (errors.EXIT_CODES)
    exit_code: int = 4

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


def error(code: str, message: str, hint: str | None = None, exit_code: int = 4) -> Problem:
    return Problem("error", code, message, hint, exit_code)


def warning(code: str, message: str, hint: str | None = None) -> Problem:
    return Problem("warning", code, message, hint, 0)


#: exit code -> the error a refusing caller raises for a problem with that code
_ERRORS: dict[int, type[AdapterctlError]] = {
    2: UsageError,
    3: NotFoundError,
    4: InvalidAdapterError,
    5: UnsupportedError,
    6: IncompatibleBaseError,
    7: MissingDependencyError,
}


def as_error(problem: Problem, prefix: str | None = None) -> AdapterctlError:
    """The error to raise for ``problem`` (same exit code); ``prefix`` names the adapter."""
    cls = _ERRORS.get(problem.exit_code, AdapterctlError)
    return cls(f"{prefix}: {problem.message}" if prefix else problem.message, hint=problem.hint)


def raise_first_error(problems: list[Problem], prefix: str | None = None) -> None:
    """Raise the first error problem, if any (warnings are the caller's to report)."""
    for p in problems:
        if p.severity == "error":
            raise as_error(p, prefix)
