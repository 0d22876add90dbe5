"""atomic_output_dir: complete outputs only, nothing partial on failure or Ctrl-C."""

from __future__ import annotations

import pytest

from adapterctl.errors import OutputExistsError
from adapterctl.io.atomic import atomic_output_dir


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if "adapterctl-" in p.name]


def test_success_renames_into_place(tmp_path):
    dest = tmp_path / "out"
    with atomic_output_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.adapterctl-tmp-")
        (tmp / "a.txt").write_text("x")
        assert not dest.exists()
    assert (dest / "a.txt").read_text() == "x" and not _leftovers(tmp_path)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_nothing(tmp_path, exc):
    dest = tmp_path / "out"
    with pytest.raises(exc):
        with atomic_output_dir(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"0" * 10)
            raise exc()
    assert not dest.exists() and not _leftovers(tmp_path)


def test_existing_output_needs_force_and_survives_failure(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="already exists") as info:
        with atomic_output_dir(dest):
            pass
    assert "--force" in info.value.hint
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(dest, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert (dest / "old.txt").read_text() == "old"
    with atomic_output_dir(dest, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"] and not _leftovers(tmp_path)
