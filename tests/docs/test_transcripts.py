"""Every ```console transcript of the docs site and the README runs and prints what it shows.

One test per block; the blocks of a page share one working folder and run in page order (a block
selected alone first runs the page's earlier blocks). ``--update`` rewrites the blocks in place
with the real output (timings and other masked parts keep their documented text).
"""

from __future__ import annotations

import pytest

from tests.docs.transcripts import (
    Block,
    Workdir,
    console_blocks,
    missing_engines,
    pages,
    rewrite,
    run_until_same,
)

BLOCKS = [block for page in pages() for block in console_blocks(page)]


class Page:
    """A page's working folder and how far its blocks have run."""

    def __init__(self, workdir: Workdir) -> None:
        self.workdir = workdir
        self.done: set[int] = set()


@pytest.fixture(scope="session")
def page_state(tmp_path_factory, request):
    state: dict = {}
    updates: dict = {}
    yield state, updates
    for page in state.values():
        page.workdir.kill()
    for path, items in updates.items():
        rewrite(path, items)


def _runnable(block: Block) -> bool:
    return not block.norun and not missing_engines(block)


#: the last block of each page that runs here: the page's servers stop after it
LAST = {block.path: block.start for block in BLOCKS if _runnable(block)}


# one page's blocks on one pytest-xdist worker, in page order (tests/xdist_groups.py)
@pytest.mark.parametrize("block", [pytest.param(b, marks=pytest.mark.xdist_group(b.where().rsplit(':', 1)[0]))
                                   for b in BLOCKS], ids=[b.where() for b in BLOCKS])
def test_transcript(block: Block, page_state, tmp_path_factory, request):
    if block.norun:
        pytest.skip(f"not run: {block.norun}")
    missing = missing_engines(block)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (set as for tests/interop)")
    state, updates = page_state
    if block.path not in state:
        root = tmp_path_factory.mktemp(block.path.stem, numbered=True)
        state[block.path] = Page(Workdir(root))
    page = state[block.path]
    for earlier in BLOCKS:  # the page's earlier blocks, when this one was selected alone
        if earlier.path == block.path and earlier.start < block.start and earlier.start not in page.done:
            if _runnable(earlier):
                page.workdir.run(earlier)
            page.done.add(earlier.start)
    update = request.config.getoption("--update", default=False)
    try:
        actual, report = (page.workdir.run(block), []) if update else run_until_same(page.workdir, block)
    finally:
        page.done.add(block.start)
        if LAST.get(block.path) == block.start:
            page.workdir.kill()  # the servers the page started
    if update:
        updates.setdefault(block.path, []).append((block, actual))
        return
    assert not report, (
        f"{block.where()}: the transcript differs from what the commands print now "
        "(python -m pytest tests/docs --update rewrites it):\n\n" + "\n\n".join(report)
    )
