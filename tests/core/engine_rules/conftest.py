"""The example base's facts (the ``base`` fixture of test_rules.py) for every engine-rule test."""

from tests.core.engine_rules.test_rules import base  # noqa: F401 (a fixture)
