"""io/folders/output_dir.py: outputs appear whole or not at all."""

from __future__ import annotations

import pytest

from adapterctl.errors import OutputExistsError, OutputIOError
from adapterctl.io.folders import output_dir
from adapterctl.io.folders.output_dir import write_output_dir


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_success_renames_into_place(tmp_path):
    dest = tmp_path / "out"
    with write_output_dir(dest, inputs=()) as tmp:
        (tmp / "f").write_text("x")
        assert not dest.exists()
    assert (dest / "f").read_text() == "x" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_nothing(tmp_path, exc):
    dest = tmp_path / "out"
    with pytest.raises(exc):
        with write_output_dir(dest, inputs=()) as tmp:
            (tmp / "f").write_text("x")
            raise exc()
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_force_and_survives_failure(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("keep")
    with pytest.raises(OutputExistsError):
        with write_output_dir(dest, inputs=()):
            pass
    with pytest.raises(RuntimeError):
        with write_output_dir(dest, force=True, inputs=()):
            raise RuntimeError()
    assert (dest / "old").read_text() == "keep"
    with write_output_dir(dest, force=True, inputs=()) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in dest.iterdir()] == ["new"] and _leftovers(tmp_path) == []


def test_concurrent_run_is_refused(tmp_path):
    dest = tmp_path / "out"
    with write_output_dir(dest, inputs=()):
        with pytest.raises(OutputIOError, match="another adapterctl run"):
            with write_output_dir(dest, inputs=()):
                pass
    assert not dest.exists() or not any(dest.iterdir())


def test_free_space_is_checked_first(tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(output_dir.shutil, "disk_usage", lambda p: usage(10**9, 0, 10**6))
    with pytest.raises(OutputIOError, match="not enough free disk space"):
        with write_output_dir(tmp_path / "out", needed_bytes=10**8, inputs=()):
            pass
    assert not (tmp_path / "out").exists()
