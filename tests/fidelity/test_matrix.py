"""The fidelity matrix (issue 18): PEFT's LoRA configurations x 13 architectures. For every case
PEFT itself can build, adapterctl's attach and its merged model both give PEFT's unmerged forward
(float32 logits within 1e-4), or adapterctl refuses the variant by name (exit 5).

The default run takes a fixed sample that covers every architecture and every configuration;
``pytest -m matrix`` (CI's second pass, .ci/run) runs the rest. ``python -m tests.fidelity.matrix``
prints every case and the counts. The docs' compatibility table (docs/reference/compatibility.md)
is this matrix's output: each case asserts its cell there, so the table cannot drift.
"""

from __future__ import annotations

import pytest

from tests.fidelity.archs import ARCHS
from tests.fidelity.configs import CONFIGS
from tests.fidelity.matrix import build_base, cell, check, run_case
from tests.helpers import REPO

PAGE = REPO / "docs/reference/compatibility.md"
START, END = "<!-- fidelity-matrix: each cell is asserted by tests/fidelity/test_matrix.py -->", "<!-- /fidelity-matrix -->"

#: every SAMPLE-th case (along the diagonals of archs x configs) runs by default
SAMPLE = 9


def _cases():
    for i, arch in enumerate(ARCHS):
        for j, config in enumerate(CONFIGS):
            marks = () if (i + j) % SAMPLE == 0 else (pytest.mark.matrix,)
            yield pytest.param(arch, config, id=f"{arch}-{config}", marks=marks)


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_base(name, root)
        return cache[name]

    return get


@pytest.mark.parametrize("arch,config", list(_cases()))
def test_case(arch, config, bases, tmp_path, record_property):
    res = run_case(bases(arch), config, tmp_path)
    record_property("fidelity", {
        "status": res.status, "refused": res.refused_by_name, "expected_refusal":
        res.expected_refusal, "attach_ok": res.attach_ok, "merged_ok": res.merged_ok,
        "merge_refused": res.merge_refused_by_name})
    check(res)
    assert cell(res) == documented()[config, arch], (
        f"{PAGE.relative_to(REPO)}: the cell ({config}, {arch}) says {documented()[config, arch]!r}, "
        f"the matrix measures {cell(res)!r}"
    )


def documented() -> dict[tuple[str, str], str]:
    """The docs' table between its markers: (configuration, architecture) -> cell."""
    table = PAGE.read_text().split(START, 1)[1].split(END, 1)[0].strip().splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    cells = {}
    for row in table[2:]:
        parts = [c.strip() for c in row.strip("|").split("|")]
        for arch, value in zip(head[1:], parts[1:]):
            cells[parts[0].strip("`"), arch] = value
    return cells


def test_docs_table_has_the_matrix_shape():
    """One row per configuration and one column per architecture, in the matrix's order."""
    table = PAGE.read_text().split(START, 1)[1].split(END, 1)[0].strip().splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["configuration", *ARCHS]
    assert [row.split("|")[1].strip().strip("`") for row in table[2:]] == list(CONFIGS)
    vocabulary = {"✓", "✓ attach, merge refused¹", "refused", "—", "n/a"}
    assert set(documented().values()) <= vocabulary
