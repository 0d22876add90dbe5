"""Dtypes, bitsandbytes-quantized bases and accelerate offload, against PeftModel on the same base."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.attach import attach_adapter
from adapterctl.core.runtime.model import load_base
from tests.core.runtime.test_attach import greedy, load_hf, logits, peft_model
from tests.helpers import max_abs_diff


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_base_rounds_once_like_peft(dtype, tiny_models, peft_adapter):
    adapter = peft_adapter("llama", r=4, target_modules="all-linear", use_dora=False)
    torch_dtype = getattr(torch, dtype)
    ref = peft_model(load_hf(tiny_models["llama"], dtype=torch_dtype), adapter)
    ours = load_base(tiny_models["llama"], dtype=dtype).model
    attach_adapter(ours, adapter)
    assert max_abs_diff(logits(ours), logits(ref)) == 0.0
    assert greedy(ours) == greedy(ref)


def _bnb_config(quantize, dtype=torch.float32):
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize,
                              bnb_4bit_compute_dtype=dtype)


@pytest.fixture(scope="module")
def bnb_llama(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels need dimensions that are multiples of 64."""
    from tests.conftest import _llama_config, build_model

    cfg = _llama_config(tie_word_embeddings=False)
    cfg.intermediate_size = 128
    return build_model(cfg, tmp_path_factory.mktemp("bnb") / "llama")


@pytest.mark.parametrize("quantize,dora,dtype", [
    ("nf4", False, "float32"), ("nf4", True, "float32"), ("fp4", False, "float32"),
    ("int8", False, "float32"), ("int8", True, "float32"),
    # bf16 results: PEFT's bnb layers round each adapter output before adding it (spec 5.8)
    ("nf4", False, "bfloat16"), ("int8", False, "bfloat16")])
def test_quantized_base_matches_peft(quantize, dora, dtype, bnb_llama, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tests.conftest import make_peft_adapter

    adapter = make_peft_adapter(bnb_llama, tmp_path / "a", r=4, use_dora=dora,
                                target_modules=["q_proj", "v_proj", "down_proj"])
    tdtype = getattr(torch, dtype)
    ref = peft_model(load_hf(bnb_llama, dtype=tdtype, quantization_config=_bnb_config(quantize, tdtype),
                             device_map={"": "cpu"}), adapter)
    lb = load_base(bnb_llama, dtype=dtype, quantize=quantize)
    report = attach_adapter(lb.model, adapter)
    kind = "Linear8bitLt" if quantize == "int8" else "Linear4bit"
    assert set(report.modules) == {kind + ("+DoRA" if dora else "")}
    assert max_abs_diff(logits(lb.model), logits(ref)) <= (1e-5 if dtype == "float32" else 0.0)
    if not (dora and quantize == "int8"):  # PEFT's int8 DoRA sets state.SCB in its first forward,
        assert greedy(lb.model) == greedy(ref)  # and bnb's CPU int8 matmul then fails on the next


def test_offloaded_layers(tiny_models, peft_adapter, tmp_path):
    """Layer 1 on disk and the lm_head on CPU-offload (accelerate hooks): same logits as in memory."""
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj", "lm_head"], use_dora=True)
    ref = peft_model(load_hf(tiny_models["llama"]), adapter)
    dmap = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    lb = load_base(tiny_models["llama"], dtype="float32", device_map=dmap,
                   offload_folder=tmp_path / "offload")
    assert lb.devices.get("disk", 0) > 0
    attach_adapter(lb.model, adapter)
    assert max_abs_diff(logits(lb.model), logits(ref)) <= 1e-5
    assert lb.model.model.layers[1].self_attn.q_proj.base_layer.weight.device.type == "meta"
    assert greedy(lb.model) == greedy(ref)


def test_placement_option_parsing():
    from adapterctl.core.runtime.model import parse_device_map, parse_max_memory
    from adapterctl.errors import UsageError

    assert parse_max_memory("0=10GiB, cpu=30GiB") == {0: "10GiB", "cpu": "30GiB"}
    assert parse_max_memory('{"cpu": "1GiB"}') == {"cpu": "1GiB"}
    assert parse_device_map("cpu") == {"": "cpu"} and parse_device_map("auto") == "auto"
    assert parse_device_map('{"lm_head": "disk", "": "cpu"}') == {"lm_head": "disk", "": "cpu"}
    with pytest.raises(UsageError):
        parse_max_memory("10GiB")
    with pytest.raises(UsageError):
        parse_device_map("[1, 2]")


def test_max_memory_offloads_to_disk(tiny_models, peft_adapter, tmp_path):
    """device_map=auto with a tiny CPU budget: accelerate offloads, LoRA still applies."""
    adapter = peft_adapter("llama", r=4, target_modules=["q_proj", "down_proj"])
    ref = peft_model(load_hf(tiny_models["llama"]), adapter)
    lb = load_base(tiny_models["llama"], dtype="float32", device_map="auto", max_memory="cpu=100KB",
                   offload_folder=tmp_path / "off")
    assert lb.devices.get("disk", 0) > 0
    attach_adapter(lb.model, adapter)
    assert max_abs_diff(logits(lb.model), logits(ref)) <= 1e-5


def test_pissa_on_a_quantized_base_is_refused(bnb_llama, tmp_path):
    pytest.importorskip("bitsandbytes")
    from adapterctl.errors import UnsupportedError
    from tests.conftest import make_peft_adapter

    adapter = make_peft_adapter(bnb_llama, tmp_path / "p", r=4, target_modules=["q_proj"],
                                init_lora_weights="pissa")
    lb = load_base(bnb_llama, dtype="float32", quantize="int8")
    with pytest.raises(UnsupportedError, match="quantized or offloaded"):
        attach_adapter(lb.model, adapter)
