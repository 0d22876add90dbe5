"""``-n N``: the tests marked ``xdist_group(NAME)`` run on one worker, in collection order (one
docs page's transcripts share a folder and the servers its blocks start; the benchmarks' quick run
is made once); the others spread as ``--dist load`` spreads them.

pytest-xdist's own ``--dist loadgroup`` appends ``@NAME`` to each test's id on the worker, and its
scheduler groups by that suffix; pytest 9's ids are structured and no longer take the suffix, so
every test ran alone. Here the groups travel beside the ids instead: each worker writes its tests'
groups to a file at collection, and the scheduler reads them when it cuts the tests into work
units (a group is one unit, any other test a unit of its own). Applies when ``-n`` chose the
distribution (``load``) or ``--dist loadgroup`` was given; any other ``--dist`` is kept."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

KEY = "adapterctl_xdist_groups"  # workerinput: the folder the workers write their groups to
FOLDER = pytest.StashKey[Path]()


def pytest_configure(config):
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    if config.getoption("dist", "no") in ("load", "loadgroup"):
        config.stash[FOLDER] = Path(tempfile.mkdtemp(prefix="pytest-xdist-groups-"))


def pytest_unconfigure(config):
    folder = config.stash.get(FOLDER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    folder = node.config.stash.get(FOLDER, None)
    if folder is not None:
        node.workerinput[KEY] = str(folder)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    folder = getattr(config, "workerinput", {}).get(KEY)
    if folder is None:
        return
    groups = {}
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names:
            groups[item.nodeid] = "_".join(names)
    path = Path(folder) / f"{config.workerinput['workerid']}.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, path)  # the scheduler never reads half a file


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    folder = config.stash.get(FOLDER, None)
    if folder is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """One work unit per group, one per ungrouped test."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked once every worker finished collecting
                self.groups = {}
                for path in sorted(folder.glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            group = self.groups.get(nodeid)
            return nodeid if group is None else f"xdist_group:{group}"

    return GroupScheduling(config, log)
