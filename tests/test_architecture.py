"""ARCHITECTURE.md names every module of adapterctl/, one line each, and names nothing that is
not there: a module added, moved or renamed without its line fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adapterctl"
DOC = REPO / "ARCHITECTURE.md"

#: a module's line: ``- `core/serve/prepare.py`: what it holds``
LINE = re.compile(r"^- `([\w/]+\.py)`: \S", re.M)
#: any ``something.py`` the document names in backquotes
NAMED = re.compile(r"`([\w/.]+\.py)`")


def _only_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def modules() -> set[str]:
    """Every module of the package, relative to adapterctl/; a package's ``__init__.py`` counts
    only when it holds more than a docstring (the top one does: the public API)."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE and _only_docstring(path):
            continue
        out.add(rel)
    return out


def listed(text: str) -> list[str]:
    return LINE.findall(text)


def test_every_module_has_its_line():
    text = DOC.read_text()
    names = listed(text)
    missing = sorted(modules() - set(names))
    assert not missing, f"ARCHITECTURE.md has no line for: {missing} (add `- `path`: what it holds`)"
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"


def test_every_named_module_exists():
    text = DOC.read_text()
    stale = sorted(set(listed(text)) - modules())
    assert not stale, f"ARCHITECTURE.md lists modules that do not exist: {stale}"
    basenames = {p.name for p in PACKAGE.rglob("*.py")}
    gone = []
    for name in set(NAMED.findall(text)):
        if "/" not in name:
            ok = name in basenames
        else:
            ok = (PACKAGE / name).is_file() or (REPO / name).is_file()
        if not ok:
            gone.append(name)
    assert not gone, f"ARCHITECTURE.md names files that do not exist: {sorted(gone)}"


def test_the_checks_can_fail(tmp_path):
    """The parser sees the lines it should, and misses what it should miss."""
    text = "- `core/serve/prepare.py`: adapters made ready\n- `nowhere/gone.py`: old\nprose `x.py`\n"
    assert listed(text) == ["core/serve/prepare.py", "nowhere/gone.py"]
    assert set(listed(text)) - modules() == {"nowhere/gone.py"}
    assert "core/generate/vllm_offline.py" in modules() and "__init__.py" in modules()
    assert "core/merge/__init__.py" not in modules()  # an empty package marker
    code = tmp_path / "__init__.py"
    code.write_text('"""doc"""\nX = 1\n')
    assert not _only_docstring(code)
