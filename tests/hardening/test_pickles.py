"""Pickles are code: legacy ``.bin`` files are only ever read with ``torch.load(weights_only=True)``
(checked over the source, and with a pickle that runs a command when unpickled unsafely), and
transformers never runs a model's own code unless ``--trust-remote-code`` is given."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from adapterctl.core.lora.loaded import load_adapter
from adapterctl.errors import AdapterctlError
from tests.helpers import REPO, invoke, write_adapter

PACKAGE = REPO / "adapterctl"


def _calls(name: str):
    """(file, call node) for every call of ``<x>.<name>(...)`` or ``name(...)`` in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    yield path.relative_to(REPO), node


def _keyword(node: ast.Call, key: str):
    kw = next((k for k in node.keywords if k.arg == key), None)
    return None if kw is None else ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else kw.value


def test_every_torch_load_is_weights_only():
    found = list(_calls("load"))
    torch_loads = [(p, n) for p, n in found
                   if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", "") == "torch"]
    assert torch_loads, "the .bin readers should be found by this scan"
    for path, node in torch_loads:
        assert _keyword(node, "weights_only") is True, f"{path}:{node.lineno} torch.load without weights_only=True"


def test_no_raw_pickle_and_no_trusted_remote_code_in_the_package():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}: imports pickle"
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), \
                    f"{path}:{node.value.lineno} hard-codes trust_remote_code=True"


class _RunsCode:
    """Unpickling this with plain pickle (weights_only=False) would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def evil_bin_adapter(tmp_path):
    folder = tmp_path / "evil"
    write_adapter(folder, {}, {"x": torch.zeros(1)})
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"base_model.model.q.lora_A.weight": _RunsCode(marker)}, fh)
    return folder, marker


def test_malicious_bin_adapter_is_refused_and_never_runs(evil_bin_adapter, tmp_path):
    folder, marker = evil_bin_adapter
    with pytest.raises(AdapterctlError) as err:
        load_adapter(folder)
    assert err.value.exit_code == 4 and "cannot be loaded safely" in err.value.message
    res = invoke("convert", "--to-safetensors", folder, tmp_path / "out")
    assert res.code == 4 and "cannot be loaded safely" in res.stderr
    res = invoke("--json", "inspect", folder)
    assert res.code != 1 and json.loads(res.stdout)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_plain_tensor_bin_still_loads(tmp_path):
    """The refusal is about code, not about the format: a plain tensor dict .bin loads."""
    p = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{p}.lora_A.weight": torch.ones(8, 4), f"{p}.lora_B.weight": torch.ones(4, 8)}
    folder = write_adapter(tmp_path / "a", {}, tensors)
    (folder / "adapter_model.safetensors").unlink()
    torch.save(tensors, folder / "adapter_model.bin")
    assert set(load_adapter(folder).modules) == {"model.layers.0.self_attn.q_proj"}


# ----- --trust-remote-code ------------------------------------------------------------------------
CUSTOM_CONFIG = '''import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("the repo's code ran")
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "custom_llm"
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture
def custom_code_model(tiny_models, tmp_path):
    """The tiny llama, re-labelled as a model whose classes live in the folder's own .py files."""
    model = shutil.copytree(tiny_models["llama"], tmp_path / "custom")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="custom_llm", architectures=["CustomForCausalLM"], auto_map={
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (model / "modeling_custom.py").write_text(CUSTOM_MODEL)
    return model


def test_remote_code_is_off_by_default_and_named(custom_code_model, peft_adapter):
    lora = peft_adapter("llama", r=2, target_modules=["q_proj"])
    res = invoke("--json", "attach", custom_code_model, lora)
    assert res.code == 2, res.stdout
    err = res.json["error"]
    assert "auto_map" in err["message"] and "--trust-remote-code" in err["hint"]
    assert not (custom_code_model / "IMPORTED").exists()


def test_known_model_type_with_auto_map_never_imports_the_code(tiny_models, peft_adapter, tmp_path):
    model = shutil.copytree(tiny_models["llama"], tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    res = invoke("attach", model, peft_adapter("llama", r=2, target_modules=["q_proj"]))
    assert res.code == 0, res.stderr
    assert not (model / "IMPORTED").exists()


def test_trust_remote_code_opts_in(custom_code_model, peft_adapter):
    from adapterctl.core.runtime.model import Placement, load_base

    with pytest.raises(AdapterctlError) as err:
        load_base(custom_code_model)
    assert err.value.exit_code == 2 and "auto_map" in err.value.message
    assert not (custom_code_model / "IMPORTED").exists()
    lb = load_base(custom_code_model, Placement(trust_remote_code=True))
    assert type(lb.model).__name__ == "CustomForCausalLM"  # the folder's own class, opted in
    res = invoke("attach", custom_code_model, peft_adapter("llama", r=2, target_modules=["q_proj"]),
                 "--trust-remote-code")
    assert res.code == 0, res.stderr


def test_generate_refuses_remote_code_by_default(custom_code_model, peft_adapter):
    lora = peft_adapter("llama", r=2, target_modules=["q_proj"])
    res = invoke("--json", "generate", custom_code_model, "--adapter", lora, "--prompt", "hi",
                 "-n", "2")
    assert res.code == 2 and "--trust-remote-code" in res.json["error"]["hint"], res.stdout
    assert not (custom_code_model / "IMPORTED").exists()
    res = invoke("--json", "generate", custom_code_model, "--adapter", lora, "--prompt", "hi",
                 "-n", "2", "--trust-remote-code")
    assert res.code == 0, res.stdout
