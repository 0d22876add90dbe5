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


# ----- nothing lost: an output never replaces an input (issue 29) ---------------------------------
def _inputs(tmp_path):
    from adapterctl.io.folders.output_dir import Input

    base, lora = tmp_path / "w" / "base", tmp_path / "w" / "lora"
    for folder, name in ((base, "config.json"), (lora, "adapter_config.json")):
        folder.mkdir(parents=True)
        (folder / name).write_text("{}")
    return base, lora, [Input.model(base, "./base"), Input.adapter(lora)]


def test_inputs_are_a_required_argument(tmp_path):
    with pytest.raises(TypeError, match="inputs"):
        with write_output_dir(tmp_path / "out"):
            pass


@pytest.mark.parametrize("where", ["base", "w", "base/sub", "lora", "lora/config.json/x", "link/base"])
def test_output_at_an_input_is_refused_even_with_force(tmp_path, where):
    from adapterctl.errors import OutputIsInputError

    base, lora, inputs = _inputs(tmp_path)
    (lora / "config.json").write_text("a file of the adapter")
    (tmp_path / "link").symlink_to(tmp_path / "w")
    dest = {"w": tmp_path / "w", "link/base": tmp_path / "link" / "base"}.get(where, tmp_path / "w" / where)
    with pytest.raises(OutputIsInputError, match="an input of this command"):
        with write_output_dir(dest, force=True, inputs=inputs):
            pass
    assert sorted(p.name for p in base.iterdir()) == ["config.json"]
    assert sorted(p.name for p in lora.iterdir()) == ["adapter_config.json", "config.json"]


def test_subfolder_of_an_adapter_is_allowed_a_top_file_is_not(tmp_path):
    from adapterctl.errors import OutputIsInputError
    from adapterctl.io.folders.output_dir import write_output_file

    _, lora, inputs = _inputs(tmp_path)
    with write_output_dir(lora / "r8", inputs=inputs) as tmp:
        (tmp / "f").write_text("x")
    with write_output_file(lora / "gguf" / "a.gguf", inputs=inputs) as tmp:
        tmp.write_text("x")
    with pytest.raises(OutputIsInputError, match="a new file at the top"):
        with write_output_file(lora / "a.gguf", inputs=inputs):
            pass
    assert sorted(p.name for p in lora.iterdir()) == ["adapter_config.json", "gguf", "r8"]


def test_hub_cache_entry_is_found_from_a_snapshot_or_a_header_stub():
    from pathlib import Path

    from adapterctl.io.folders.output_dir import cache_entry

    assert cache_entry(Path("/h/hub/models--a--b/snapshots/123")) == Path("/h/hub/models--a--b")
    stub = Path("/h/adapterctl/headers/models--a--b/123")
    assert cache_entry(stub) == Path("/h/adapterctl/headers/models--a--b")
    assert cache_entry(Path("/data/models--mine/lora")) is None  # a folder's name alone is no cache


def test_replaces_says_whether_the_output_exists(tmp_path):
    from adapterctl.io.folders.output_dir import replaces

    assert replaces(None) == []
    assert replaces(tmp_path / "out") == [{"path": str(tmp_path / "out"), "exists": False}]
    (tmp_path / "out").mkdir()
    assert replaces(tmp_path / "out") == [{"path": str(tmp_path / "out"), "exists": True}]
