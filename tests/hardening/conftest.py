"""Shared pieces of the hardening suite: a counter of fuzz examples reported at the end of the run,
the known token string the secret tests grep for, and hypothesis settings bounded for CI."""

from __future__ import annotations

import collections
import os

from hypothesis import HealthCheck, settings

from tests.hub.conftest import hub  # noqa: F401  (the local Hub server fixture)

#: property name -> examples run (each property calls :func:`count` once per example)
EXAMPLES: collections.Counter = collections.Counter()

#: bounded for CI (2 busy cores): the whole suite stays within a few minutes; a deeper run:
#: ADAPTERCTL_FUZZ_EXAMPLES=5000 pytest tests/hardening
EXAMPLES_PER_PROPERTY = int(os.environ.get("ADAPTERCTL_FUZZ_EXAMPLES", "250"))
#: CI runs a fixed (derandomized) set of examples, so a landing never hinges on luck; local runs
#: explore new ones and print the input that reproduces any failure.
FUZZ = settings(max_examples=EXAMPLES_PER_PROPERTY, deadline=None,
                derandomize=os.environ.get("CI", "").lower() in ("1", "true"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
FUZZ_SLOW = settings(FUZZ, max_examples=max(1, EXAMPLES_PER_PROPERTY * 3 // 5))


def count(name: str) -> None:
    EXAMPLES[name] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not EXAMPLES:
        return
    tr = terminalreporter
    tr.section("hardening: fuzz examples run")
    for name, n in sorted(EXAMPLES.items()):
        tr.write_line(f"{n:6d}  {name}")
    tr.write_line(f"{sum(EXAMPLES.values()):6d}  total over {len(EXAMPLES)} properties")
