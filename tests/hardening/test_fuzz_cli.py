"""Whole commands on mutated adapters: ``inspect`` (the command CI pipelines run on strangers'
uploads) and ``load_adapter`` (what attach, merge and convert read with). A broken file ends in
an exit code other than 1 (1 means a bug) and, with --json, exactly one JSON document."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapterctl.core.lora.loaded import load_adapter
from adapterctl.errors import AdapterctlError
from tests.hardening.conftest import FUZZ_SLOW, count
from tests.hardening.test_fuzz_parsers import CONFIGS
from tests.helpers import invoke, write_adapter


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            p = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(8, 16, generator=g)
            tensors[f"{p}.lora_B.weight"] = torch.randn(16, 8, generator=g)
    return write_adapter(tmp_path_factory.mktemp("good") / "lora", {}, tensors)


MUTATIONS = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6)


def _mutated(good, tmp_path_factory, config_patch, flips, cut):
    folder = tmp_path_factory.mktemp("mut", numbered=True) / "lora"
    shutil.copytree(good, folder)
    if config_patch is not None:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, **config_patch}))
    data = bytearray((folder / "adapter_model.safetensors").read_bytes())
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    (folder / "adapter_model.safetensors").write_bytes(bytes(data[:cut] if cut else data))
    return folder


@FUZZ_SLOW
@given(config_patch=st.one_of(st.none(), CONFIGS), flips=st.one_of(st.just([]), MUTATIONS),
       cut=st.one_of(st.none(), st.integers(0, 3000)))
def test_inspect_on_mutated_adapters(good_adapter, tmp_path_factory, config_patch, flips, cut):
    count("inspect --json --check-values on mutated adapters (CLI, in-process)")
    folder = _mutated(good_adapter, tmp_path_factory, config_patch, flips, cut)
    res = invoke("--json", "inspect", folder, "--check-values")
    assert res.code != 1, res.stdout
    doc = json.loads(res.stdout)  # exactly one JSON document, success or failure
    assert doc["ok"] is (res.code == 0)
    if res.code:  # a refusal, or inspect's report listing the problems it found
        errors = [doc["error"]] if "error" in doc else doc["problems"]
        assert res.code in {e["exit_code"] for e in errors} and all(e["message"] for e in errors)


@FUZZ_SLOW
@given(config_patch=st.one_of(st.none(), CONFIGS), flips=st.one_of(st.just([]), MUTATIONS),
       cut=st.one_of(st.none(), st.integers(0, 3000)))
def test_load_adapter_on_mutated_adapters(good_adapter, tmp_path_factory, config_patch, flips, cut):
    count("load_adapter on mutated adapters (attach/merge/convert reader)")
    folder = _mutated(good_adapter, tmp_path_factory, config_patch, flips, cut)
    try:
        loaded = load_adapter(folder)
    except AdapterctlError as err:
        assert err.exit_code != 1, err
        return
    for w in loaded.modules.values():  # what is accepted is consistent with the config
        assert w.A.shape[0] == w.r and w.B.dim() >= 2 and w.B.shape[1] == w.r


def test_lora_b_with_another_rank_is_refused(tmp_path):
    """Found here: lora_B (16, 4) beside lora_A (8, 16) and r=8 was accepted, and failed later
    inside a matmul (an internal error) in merge or attach."""
    p = "base_model.model.model.layers.0.self_attn.q_proj"
    write_adapter(tmp_path / "a", {}, {f"{p}.lora_A.weight": torch.zeros(8, 16),
                                       f"{p}.lora_B.weight": torch.zeros(16, 4)})
    with pytest.raises(AdapterctlError) as err:
        load_adapter(tmp_path / "a")
    assert err.value.exit_code == 4 and "lora_B has shape [16, 4] but r=8" in err.value.message
