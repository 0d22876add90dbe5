"""io/formats/classify.py: the one rule for what a path holds, and the callers that used to spell
it four ways (attach's BASE-or-adapter argument, merge --to-adapter, push, check's default base)."""

import json

import pytest

from adapterctl.core.publish.push import detect_kind
from adapterctl.core.runtime.session import split_base_and_adapters
from adapterctl.errors import AdapterctlError
from adapterctl.io.formats.classify import classify_folder
from adapterctl.io.formats.gguf_header import MAGIC


def _folder(tmp_path, name, *files, mlx=False):
    d = tmp_path / name
    d.mkdir()
    for f in files:
        (d / f).write_text("{}")
    if mlx:
        (d / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora"}))
        (d / "adapters.safetensors").write_bytes(b"")
    return d


@pytest.fixture
def paths(tmp_path):
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(MAGIC + b"\0" * 16)
    return {
        "adapter": _folder(tmp_path, "adapter", "adapter_config.json"),
        "both": _folder(tmp_path, "both", "adapter_config.json", "config.json"),
        "model": _folder(tmp_path, "model", "config.json"),
        "mlx": _folder(tmp_path, "mlx", mlx=True),
        "gguf": gguf,
        "empty": _folder(tmp_path, "empty"),
        "text": tmp_path / "notes.txt",
        "missing": tmp_path / "nowhere",
    }


@pytest.mark.parametrize("name,kind", [("adapter", "adapter"), ("both", "adapter"), ("model", "model"),
                                       ("mlx", "mlx"), ("gguf", "gguf"), ("empty", None), ("missing", None)])
def test_classify_folder(paths, name, kind):
    assert classify_folder(paths[name]) == kind


def test_every_caller_agrees(paths):
    assert split_base_and_adapters([str(paths["adapter"]), "x"]) == (None, [str(paths["adapter"]), "x"])
    assert split_base_and_adapters([str(paths["model"]), "x"]) == (str(paths["model"]), ["x"])
    assert detect_kind(paths["adapter"]) == "adapter" and detect_kind(paths["model"]) == "model"
    for name in ("mlx", "empty"):
        with pytest.raises(AdapterctlError) as err:
            detect_kind(paths[name])
        assert err.value.exit_code in (3, 4)
