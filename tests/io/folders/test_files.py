"""io/folders/files.py: JSON configs read carefully: every failure an AdapterctlError naming the
file, never a traceback."""

from __future__ import annotations

import pytest

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.folders import files
from adapterctl.io.folders.files import read_json_object


def test_an_object_is_read(tmp_path):
    (tmp_path / "c.json").write_text('{"r": 8, "target_modules": ["q_proj"]}')
    assert read_json_object(tmp_path / "c.json") == {"r": 8, "target_modules": ["q_proj"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"r": 8,', "is not valid JSON \\(line 1, column 9"),
        (b"[1, 2]", "must hold a JSON object, found list"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_bad_files_are_invalid_and_named(tmp_path, content, message):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(content)
    with pytest.raises(InvalidAdapterError, match=message) as err:
        read_json_object(path, "adapter config")
    assert str(path) in err.value.message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(NotFoundError, match="config.json: model config not found"):
        read_json_object(tmp_path / "config.json", "model config")
    with pytest.raises(InvalidAdapterError, match="expected a JSON file, found a directory"):
        read_json_object(tmp_path)


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 16)
    (tmp_path / "big.json").write_text('{"padding": "' + "x" * 32 + '"}')
    with pytest.raises(InvalidAdapterError, match="bytes, more than the"):
        read_json_object(tmp_path / "big.json")
