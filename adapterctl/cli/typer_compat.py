"""Start-up: plain values skip Typer's pydantic coercion.

Typer 0.26+ coerces every parameter value (defaults included) through a pydantic ``TypeAdapter``
built on first use; importing pydantic and building those adapters was about a third of
``adapterctl inspect``'s wall time. A value that already has its parameter's plain type (a ``str``
from argv for a ``str`` parameter, an ``int`` default for an unbounded ``int`` option, a list of
``str`` for ``list[str]``) comes out of those adapters unchanged, so it is passed through here;
anything else (bytes, a Path, a choice, a bound, a parser, a string for an ``int``) still goes to
Typer's own coercion, built as before. Older Typer versions (no ``_TyperParameter``) are left as
they are. ``tests/cli/test_frame.py`` checks that ``inspect`` and ``--help`` import no pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _passes_through(annotation: Any, info: Any, value: Any) -> bool:
    """True when Typer's adapter would return ``value`` itself (or, for lists, an equal list)."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return False
    if annotation is str:
        return type(value) is str
    if annotation is int or annotation is float:
        unbounded = getattr(info, "min", None) is None and getattr(info, "max", None) is None
        return unbounded and type(value) is annotation
    if annotation == list[str]:
        return isinstance(value, (list, tuple)) and all(type(v) is str for v in value)
    return False


def install() -> None:
    try:
        from typer import _coercion, core
    except ImportError:  # Typer before 0.26: click types, no pydantic
        return
    param_cls = getattr(core, "_TyperParameter", None)
    base = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    if param_cls is None or base is None or build is None or getattr(param_cls, "_adapterctl", 0):
        return

    @dataclass(frozen=True)
    class PlainParam(base):
        """Pass a plain value through; build Typer's own coercion only for anything else."""

        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if _passes_through(self.annotation, self.parameter_info, value):
                return list(value) if isinstance(value, tuple) else value
            param._runtime_param = build(self.descriptor)
            return param._runtime_param._coerce_value(value, param=param, ctx=ctx)

    original = param_cls.get_runtime_param

    def get_runtime_param(self):
        desc = getattr(self, "type_descriptor", None)
        if self._runtime_param is None and desc is not None and desc.file_annotation is None:
            self._runtime_param = PlainParam(
                parameter_info=desc.parameter_info, annotation=desc.annotation, descriptor=desc
            )
        return original(self)

    param_cls.get_runtime_param = get_runtime_param
    param_cls._adapterctl = 1
