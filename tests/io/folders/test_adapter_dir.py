"""io/folders/adapter_dir.py: which files make an adapter folder, and what is said when a path
is not one."""

from __future__ import annotations

import pytest

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.folders.adapter_dir import locate_adapter_files
from tests.helpers import REPO


def test_safetensors_weights_are_found_before_a_bin(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"x")
    files = locate_adapter_files(tmp_path, "me/lora")
    assert (files.weights_format, files.weights.name, files.source) == ("bin", "adapter_model.bin", "me/lora")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    files = locate_adapter_files(tmp_path)
    assert files.weights_format == "safetensors" and files.config == tmp_path / "adapter_config.json"
    assert files.source == str(tmp_path)


def test_a_folder_without_weights_is_located_with_none(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    files = locate_adapter_files(tmp_path)
    assert files.weights is None and files.weights_format is None


def test_the_example_adapter():
    files = locate_adapter_files(REPO / "examples" / "upper-lora")
    assert files.weights_format == "safetensors" and files.weights.is_file()


def test_wrong_paths_name_themselves_and_say_what_to_give(tmp_path):
    with pytest.raises(NotFoundError, match="nowhere: no such adapter directory"):
        locate_adapter_files(tmp_path / "nowhere", "nowhere")
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(InvalidAdapterError, match="is a file, expected an adapter directory"):
        locate_adapter_files(tmp_path / "f.json")
    with pytest.raises(NotFoundError, match="no adapter_config.json") as err:
        locate_adapter_files(REPO / "examples" / "tiny-base")
    assert "full model (config.json)" in err.value.hint
