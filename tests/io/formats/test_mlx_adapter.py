"""io/formats/mlx_adapter.py: MLX-LM adapter folders written and read back (numpy), told apart
from PEFT folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapterctl.errors import NotFoundError
from adapterctl.io.formats.mlx_adapter import is_mlx_adapter_dir, read_mlx_header, read_mlx_tensors, write_mlx_files
from tests.helpers import REPO

CONFIG = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 2.0}}


def test_written_files_read_back_exactly(tmp_path):
    a = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float16)
    write_mlx_files(tmp_path, CONFIG, {"model.layers.0.self_attn.q_proj.lora_a": a, "model.layers.0.self_attn.q_proj.lora_b": b})
    assert is_mlx_adapter_dir(tmp_path)
    head = read_mlx_header(tmp_path)
    assert head.config == CONFIG and head.header.tensors["model.layers.0.self_attn.q_proj.lora_b"].dtype == "F16"
    tensors = read_mlx_tensors(head)
    assert np.array_equal(tensors["model.layers.0.self_attn.q_proj.lora_a"], a)
    assert np.array_equal(tensors["model.layers.0.self_attn.q_proj.lora_b"], b.astype(np.float32))


def test_a_peft_folder_is_not_an_mlx_adapter(tmp_path):
    assert not is_mlx_adapter_dir(REPO / "examples" / "upper-lora")
    write_mlx_files(tmp_path, {"peft_type": "LORA", **CONFIG}, {"x": np.zeros(1, np.float32)})
    assert not is_mlx_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("not json")
    assert not is_mlx_adapter_dir(tmp_path)


def test_a_folder_without_weights_says_which_folder_to_give(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(NotFoundError, match="no adapters.safetensors") as err:
        read_mlx_header(tmp_path)
    assert "--adapter-path" in err.value.hint
