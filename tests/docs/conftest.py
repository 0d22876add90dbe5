"""``python -m pytest tests/docs --update`` rewrites every transcript with the real output."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--update", action="store_true", default=False,
                     help="tests/docs: rewrite the docs' ```console transcripts with the real output")
