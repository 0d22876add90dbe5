"""A first run on the bundled example shows only adapterctl's own output: no third-party warning
(transformers' FutureWarnings, torch's UserWarnings) reaches stderr, also with every warning shown."""

from __future__ import annotations

import re

from tests.helpers import run_cli

THIRD_PARTY_WARNING = re.compile(r"\b\w*(Warning|Deprecat\w*)\b.*|site-packages")


def test_generate_on_the_bundled_example_prints_no_third_party_warning():
    res = run_cli(
        "generate", "examples/tiny-base", "-a", "examples/upper-lora", "-a", "examples/dragon-dora",
        "--prompt", "the little fox", "--max-new-tokens", "6", "--compare",
        env={"PYTHONWARNINGS": "always"},  # what a filter in adapterctl would otherwise hide
    )
    assert res.code == 0, res.stderr
    assert "MET A" in res.stdout and "dragon" in res.stdout
    noise = [line for line in res.stderr.splitlines() if THIRD_PARTY_WARNING.search(line)]
    assert not noise, "\n".join(noise)
