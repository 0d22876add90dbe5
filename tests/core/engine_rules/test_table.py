"""The docs' rules table (docs/reference/engine-rules.md) is the one the rule modules generate (run this module to refresh it:
``python -m tests.core.engine_rules.test_table``)."""

from __future__ import annotations

from adapterctl.core.engine_rules.check import ENGINES
from adapterctl.core.engine_rules.table import END, START, rules_table, with_table
from tests.helpers import REPO

PAGE = REPO / "docs/reference/engine-rules.md"


def test_the_docs_rules_table_is_current():
    text = PAGE.read_text()
    assert START in text and END in text
    assert with_table(text) == text, "docs/reference/engine-rules.md is stale: python -m tests.core.engine_rules.test_table"


def test_every_rule_has_a_row_with_its_proof():
    table = rules_table()
    for engine in ENGINES.values():
        for rule in engine.rules:
            row = next(line for line in table.splitlines() if f"`{rule.id}`" in line)
            assert f"| {rule.source.proof} |" in row and rule.source.proof in ("executed", "read")
    assert "| executed |" in table and "| read |" in table


if __name__ == "__main__":
    PAGE.write_text(with_table(PAGE.read_text()))
