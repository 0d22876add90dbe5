"""The one exception hierarchy of adapterctl (stdlib only).

Every failure a user can act on is an :class:`AdapterctlError` subclass with its own exit code. The
CLI prints ``message`` and ``hint`` (never a traceback unless ``--debug``); with ``--json`` it prints
``{"ok": false, "error": {"type", "message", "hint", "exit_code"}}``. Anything else that escapes is a
bug and exits 1.
"""

from __future__ import annotations

#: Documented exit codes, in the order the README and ``--help`` list them.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: rerun with --debug and report it)",
    2: "usage error (bad option or argument, output exists without --force)",
    3: "not found (file, directory, Hub repo, revision)",
    4: "invalid input (adapter or model files that are broken or inconsistent)",
    5: "unsupported feature (a LoRA variant or option adapterctl does not implement)",
    6: "incompatible with the base model (missing modules, shape mismatch)",
    7: "missing dependency or hardware (e.g. bitsandbytes, CUDA)",
    8: "Hub or network error (auth, permissions, connection, server errors)",
    9: "I/O error (disk full, permission denied, output locked by another run)",
    10: "an engine will not serve the adapter as trained (check: changes or refuses; verify: differs or no-op; eval: a copy past --max-kl or --min-top1)",
    130: "interrupted (Ctrl-C)",
}


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
