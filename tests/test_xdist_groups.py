"""tests/xdist_groups.py: under ``-n 2`` the tests of one ``xdist_group`` run on one worker, in
order, and the others still spread over both workers."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO

TESTS = '''
import os
import pytest

def record(name):
    with open("ran.txt", "a") as f:
        f.write(f"{os.environ['PYTEST_XDIST_WORKER']} {name}\\n")

@pytest.mark.xdist_group("page")
@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    record(f"grouped{i}")

@pytest.mark.parametrize("i", range(8))
def test_alone(i):
    record(f"alone{i}")
'''


def test_a_group_runs_on_one_worker_in_order(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("tests.xdist_groups",)\n')
    (tmp_path / "test_groups.py").write_text(TESTS)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = [line.split() for line in (tmp_path / "ran.txt").read_text().splitlines()]
    grouped = [(worker, name) for worker, name in ran if name.startswith("grouped")]
    assert len({worker for worker, _ in grouped}) == 1
    assert [name for _, name in grouped] == [f"grouped{i}" for i in range(4)]
    assert len(ran) == 12
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}
