"""io/folders/model_dir.py: a model folder's config and weight files (single or sharded), its
shapes from headers, and the index entries it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapterctl.errors import InvalidAdapterError, NotFoundError
from adapterctl.io.folders.model_dir import find_checkpoint_key, locate_model_files, read_model_shapes
from tests.helpers import REPO


def sharded(tmp_path, index: dict | None = None):
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"a.weight": np.zeros((2, 3), np.float32)}, root / "model-1.safetensors")
    save_file({"b.weight": np.zeros((4,), np.float16)}, root / "model-2.safetensors")
    wm = {"a.weight": "model-1.safetensors", "b.weight": "model-2.safetensors"}
    doc = index or {"metadata": {"total_size": 32}, "weight_map": wm}
    (root / "model.safetensors.index.json").write_text(json.dumps(doc))
    return root


def test_a_sharded_folder_lists_its_shards_and_shapes(tmp_path):
    files = locate_model_files(sharded(tmp_path))
    assert [f.name for f in files.weight_files] == ["model-1.safetensors", "model-2.safetensors"]
    assert files.weights_format == "safetensors" and files.model_type == "llama"
    assert files.index_metadata == {"total_size": 32}
    assert read_model_shapes(files) == {"a.weight": (2, 3), "b.weight": (4,)}


def test_the_example_base_is_one_file():
    files = locate_model_files(REPO / "examples" / "tiny-base")
    assert [f.name for f in files.weight_files] == ["model.safetensors"] and files.weight_map == {}
    assert read_model_shapes(files)["model.embed_tokens.weight"][0] == files.config["vocab_size"]


def test_an_index_entry_outside_the_folder_is_refused(tmp_path):
    root = sharded(tmp_path, {"weight_map": {"a.weight": "../../etc/passwd"}})
    with pytest.raises(InvalidAdapterError, match="points outside the model folder"):
        locate_model_files(root)


def test_a_listed_shard_that_is_missing_is_named(tmp_path):
    root = sharded(tmp_path)
    (root / "model-2.safetensors").unlink()
    with pytest.raises(NotFoundError, match="shard model-2.safetensors is listed but missing"):
        locate_model_files(root)


def test_an_adapter_folder_is_not_a_model(tmp_path):
    with pytest.raises(NotFoundError, match="no config.json") as err:
        locate_model_files(REPO / "examples" / "upper-lora", "upper-lora")
    assert "adapter folder" in err.value.hint
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotFoundError, match="no model weights"):
        locate_model_files(tmp_path)


def test_checkpoint_keys_with_and_without_the_model_prefix():
    keys = {"h.0.attn.c_attn.weight", "model.norm.weight"}
    assert find_checkpoint_key("transformer.h.0.attn.c_attn.weight", keys) == "h.0.attn.c_attn.weight"
    assert find_checkpoint_key("norm.weight", keys) == "model.norm.weight"
    assert find_checkpoint_key("model.norm.weight", keys) == "model.norm.weight"
    assert find_checkpoint_key("lm_head.weight", keys) is None
