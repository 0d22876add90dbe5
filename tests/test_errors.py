"""errors.py is the one description of the exit codes: the docs' table is generated from it,
every error class has a documented code, and core/io name error classes, never exit integers."""

import re

import adapterctl.errors as E
from tests.helpers import REPO


def test_docs_exit_code_table_is_generated_from_errors():
    page = (REPO / "docs/reference/exit-codes.md").read_text()
    assert E.exit_code_table() in page, (
        "docs/reference/exit-codes.md's table differs from adapterctl/errors.py: run python -m adapterctl.errors"
    )


def test_refresh_readme_rewrites_a_stale_table(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text("# x\n\n## Exit codes\n\n| code | meaning |\n|---|---|\n| 0 | old |\n\n## Next\n")
    assert E.refresh_readme(stale) is True
    assert stale.read_text() == "# x\n\n## Exit codes\n\n" + E.exit_code_table() + "\n## Next\n"
    assert E.refresh_readme(stale) is False


def test_every_error_class_has_a_documented_exit_code():
    classes = [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.AdapterctlError)]
    assert len(classes) >= 12
    for cls in classes:
        assert cls.exit_code in E.EXIT_CODES, cls


def test_core_and_io_name_error_classes_not_exit_integers():
    pattern = re.compile(r"exit_code\s*[=!<>]=?\s*\d|_BY_EXIT|EXIT_CODES")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("adapterctl/core", "adapterctl/io")
        for path in sorted((REPO / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
