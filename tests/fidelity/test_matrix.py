"""The fidelity matrix (issue 18): PEFT's LoRA configurations x 13 architectures. For every case
PEFT itself can build, adapterctl's attach and its merged model both give PEFT's unmerged forward
(float32 logits within 1e-4), or adapterctl refuses the variant by name (exit 5).

The default run takes a fixed sample that covers every architecture and every configuration;
``pytest -m matrix`` (CI's second pass, .ci/run) runs the rest. ``python -m tests.fidelity.matrix``
prints every case and the counts.
"""

from __future__ import annotations

import pytest

from tests.fidelity.archs import ARCHS
from tests.fidelity.configs import CONFIGS
from tests.fidelity.matrix import build_base, check, run_case

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
