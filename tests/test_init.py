"""The package root: the lazy public API, its ``__all__`` and the typed names type checkers see."""

from __future__ import annotations

import ast
import inspect

import adapterctl


def test_all_is_the_lazy_api():
    assert adapterctl.__all__ == ["__version__", *adapterctl._LAZY]


def test_type_checking_imports_are_the_lazy_api():
    """The ``if TYPE_CHECKING`` imports name the same objects, from the same modules, as _LAZY."""
    tree = ast.parse(inspect.getsource(adapterctl))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {(a.name, (node.module, a.name)) for node in block.body for a in node.names}
    assert typed == set(adapterctl._LAZY.items())
