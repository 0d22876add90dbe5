"""Problems found while checking an adapter: reported by inspect, raised by the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (the adapter cannot be used as is) | "warning"
    code: str  # stable machine-readable id, e.g. "rank_mismatch"
    message: str
    hint: str | None = None
    #: the exit code this problem maps to when it makes the adapter unusable (errors.EXIT_CODES)
    exit_code: int = 4

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "hint": self.hint, "exit_code": self.exit_code}


def error(code: str, message: str, hint: str | None = None, exit_code: int = 4) -> Problem:
    return Problem("error", code, message, hint, exit_code)


def warning(code: str, message: str, hint: str | None = None) -> Problem:
    return Problem("warning", code, message, hint, 0)
