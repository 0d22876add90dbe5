"""attach on FP8, MXFP4 and compressed-tensors bases (issue 17): the base is dequantized on load to
--dtype by the reader merge uses; logits equal PEFT's on the same model dequantized by the format's
own reference code (tests/quant_fixtures.py). Tolerance: 0 (float32 and bfloat16): the same dense
weights and the same LoRA maths."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.attach import attach_adapter
from adapterctl.core.runtime.model import load_base
from tests.core.runtime.test_attach import greedy, load_hf, logits, peft_model
from tests.helpers import invoke, max_abs_diff


@pytest.mark.parametrize("name,dtype", [
    ("fp8_ragged_blocks", "float32"), ("fp8_ragged_blocks", "bfloat16"),
    ("ct_int4_group_asym", "float32"), ("ct_fp8_channel", "bfloat16")])
def test_attach_equals_peft_on_the_dequantized_base(name, dtype, quant_base, peft_adapter):
    qdir, dense = quant_base(name)
    adapter = peft_adapter("llama", r=4, target_modules="all-linear")
    lb = load_base(qdir, dtype=dtype)
    assert lb.dtype == dtype and not hasattr(lb.model.config, "quantization_config")
    attach_adapter(lb.model, adapter)
    ref = peft_model(load_hf(dense, dtype=getattr(torch, dtype)), adapter)
    assert max_abs_diff(logits(lb.model), logits(ref)) == 0.0
    assert greedy(lb.model) == greedy(ref)


def test_attach_on_an_mxfp4_gpt_oss(gpt_oss, tmp_path):
    from tests.conftest import make_peft_adapter

    qdir, dense = gpt_oss
    adapter = make_peft_adapter(dense, tmp_path / "a", r=4, target_modules=["q_proj", "v_proj"])
    lb = load_base(qdir, dtype="float32")
    experts = lb.model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape == (4, 64, 128) and experts.gate_up_proj.dtype == torch.float32
    attach_adapter(lb.model, adapter)
    ref = peft_model(load_hf(dense), adapter)
    assert max_abs_diff(logits(lb.model), logits(ref)) == 0.0


def test_cli_attach_json_and_quantize_refused(quant_base, peft_adapter):
    qdir, _ = quant_base("fp8_ragged_blocks")
    adapter = peft_adapter("llama", r=4, target_modules="all-linear")
    res = invoke("--json", "attach", qdir, adapter, "--dtype", "bfloat16")
    assert res.code == 0, res.stderr
    assert res.json["base"]["dtype"] == "bfloat16"
    res = invoke("attach", qdir, adapter, "--quantize", "nf4")
    assert res.code == 2 and "already quantized (fp8)" in res.stderr and "Drop --quantize" in res.stderr
