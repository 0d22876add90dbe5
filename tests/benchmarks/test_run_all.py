"""benchmarks/run_all.py --quick end to end: every plotted benchmark runs on tiny models into a
temporary folder, and the results page, its plots and results.json come out whole and readable.
Timings are never asserted (they are the page's business, not the tests')."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

BENCH = REPO / "benchmarks"
STEPS = ("merge_scaling", "generate", "attach", "startup")  # the benchmarks with a plot
# ~20 processes that import torch: about a minute on a quiet machine. One worker runs the module:
# the module-scoped run below is then made once, not once per worker racing on the benchmarks' cache
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("benchmarks-run-all")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("results")
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--out", str(out),
                           "--steps", ",".join(STEPS)],
                          capture_output=True, text=True, timeout=1200, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, failed_steps(out) or proc.stderr[-4000:]
    return out, proc


def failed_steps(out: Path) -> str:
    """The failed steps' own output tails, from results.json (stderr's tail shows the last step)."""
    try:
        results = json.loads((out / "results.json").read_text())["results"]
    except (OSError, ValueError, KeyError):
        return ""
    return "\n".join(f"{name}: {r['error']}\n" + "\n".join(r.get("output_tail", []))
                     for name, r in results.items() if isinstance(r, dict) and "error" in r)


def test_quick_run_writes_the_page_plots_and_figures(quick_run):
    import matplotlib.image

    out, proc = quick_run
    for i, step in enumerate(STEPS, 1):  # per-step progress on stderr
        assert f"step {i}/{len(STEPS)}: {step} done" in proc.stderr
    page = (out / "RESULTS.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    meta = doc["meta"]
    assert set(doc["results"]) == set(STEPS)
    assert not [k for k, v in doc["results"].items() if "error" in v]
    # the header names machine, versions, date and load
    assert f"{meta['cores']} cores" in page and meta["cpu"] in page
    for key in ("torch", "transformers", "peft", "python"):
        assert meta[key] and meta[key] in page
    assert re.fullmatch(r"[0-9a-f]{10}(\+changes)?", meta["adapterctl"])
    assert meta["date"] in page and "--quick" in page
    for section in ("## Merge: time and memory against model size", "### A line, not a curve",
                    "### Where the memory goes", "## Generate", "## Attach", "## Start-up"):
        assert section in page
    sizes = {s["size"]: s for s in doc["results"]["merge_scaling"]["sizes"]}
    assert set(sizes) == {"tiny", "small"}
    assert set(sizes["small"]["tools"]) == {"cp", "adapterctl", "peft"}
    # every plot the page shows exists and is a readable, non-blank PNG
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert sorted(images) == sorted(f"plots/{s}.png" for s in STEPS)
    for rel in images:
        pixels = matplotlib.image.imread(out / rel)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        assert pixels.std() > 0.01


def test_a_failed_step_is_on_the_page_and_fails_the_run(quick_run, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from run_all import write_outputs
    finally:
        sys.path.remove(str(BENCH))
    doc = json.loads((quick_run[0] / "results.json").read_text())
    doc["results"]["generate"] = {"error": "exit 3", "output_tail": ["boom: no such model"]}
    assert write_outputs(tmp_path, doc["meta"], doc["results"]) == 1
    page = (tmp_path / "RESULTS.md").read_text()
    assert "- `generate`: failed (exit 3); last line: `boom: no such model`" in page
    assert "## Generate" not in page
    assert not (tmp_path / "plots" / "generate.png").exists()
    assert (tmp_path / "plots" / "merge_scaling.png").is_file()
