"""PEFT LoRA variants (spec 1.4): each one either attaches and merges to PEFT's unmerged forward
(float32, 1e-4) or is refused by name with exit 5."""

from __future__ import annotations

import torch

from adapterctl.core.runtime.attach import attach_adapter
from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.core.merge.write import execute_merge
from tests.helpers import invoke

IDS = torch.tensor([[0, 5, 9, 42, 7, 3, 100, 200]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def check_against_peft(base, adapter, tmp_path) -> None:
    from peft import PeftModel

    oracle = _logits(PeftModel.from_pretrained(_base(base), str(adapter)).eval())
    assert float((oracle - _logits(_base(base))).abs().max()) > 1e-3  # the adapter does something
    model = _base(base)
    attach_adapter(model, adapter)
    assert float((_logits(model) - oracle).abs().max()) <= 1e-4
    job = plan_merge(base, load_adapters([adapter]), MergeOptions())
    execute_merge(job, tmp_path / "merged", device="cpu")
    assert float((_logits(_base(tmp_path / "merged")) - oracle).abs().max()) <= 1e-4


def test_velora_is_plain_lora_in_the_forward(tiny_models, peft_adapter, tmp_path):
    """VeLoRA's lora_velora_embed vectors only compress activations for the backward pass."""
    adapter = peft_adapter("llama", r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                           velora_config={"num_groups": 4, "init_type": "batch_average"})
    check_against_peft(tiny_models["llama"], adapter, tmp_path)
    res = invoke("--json", "inspect", adapter)
    assert res.code == 0 and res.json["usable"] and "VeLoRA" in res.json["variants"]
    assert not [p for p in res.json["problems"] if p["code"] == "unknown_key"]


def test_velora_vectors_are_kept_by_convert_and_dropped_for_serving(tiny_models, peft_adapter,
                                                                    tmp_path):
    from safetensors import safe_open

    adapter = peft_adapter("llama", r=4, target_modules=["q_proj"], velora_config={"num_groups": 4})
    for flag, kept in (("--rank", True), ("--for-serving", False)):
        out = tmp_path / flag.strip("-")
        # --for-serving covers SGLang, whose zero q/k/v partners take their shapes from the base
        extra = [flag, "2"] if flag == "--rank" else [flag, "--base", str(tiny_models["llama"])]
        res = invoke("--json", "convert", *extra, adapter, out)
        assert res.code == 0, res.stderr
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
            assert any("lora_velora_embed" in k for k in f.keys()) is kept
        if not kept:
            assert any("VeLoRA" in r for r in res.json["removed"])


BDLORA = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
              use_bdlora={"target_modules_bd_a": ["o_proj"], "target_modules_bd_b": ["q_proj", "v_proj"],
                          "nblocks": 2})


def test_bdlora_blocks_are_read_as_the_block_diagonal_matrix(tiny_models, peft_adapter, tmp_path):
    adapter = peft_adapter("llama", **BDLORA)
    check_against_peft(tiny_models["llama"], adapter, tmp_path)
    res = invoke("--json", "inspect", adapter, "--base", tiny_models["llama"])
    assert res.code == 0 and res.json["usable"] and "BD-LoRA" in res.json["variants"], res.stdout
    mods = {m["name"].split(".", 3)[-1]: m for m in res.json["modules"]}
    assert mods["self_attn.q_proj"]["b_shape"] == [64, 4] and mods["self_attn.o_proj"]["a_shape"] == [4, 64]


def test_bdlora_rank_reduced_or_combined_is_plain_lora(tiny_models, peft_adapter, tmp_path):
    """New factors are full matrices: the config drops use_bdlora, and PEFT loads the result."""
    import json

    from peft import PeftModel

    adapter = peft_adapter("llama", **BDLORA)
    assert invoke("convert", "--rank", "4", adapter, tmp_path / "cv").code == 0
    assert invoke("merge", "--to-adapter", adapter, "-o", tmp_path / "ta").code == 0
    oracle = _logits(PeftModel.from_pretrained(_base(tiny_models["llama"]), str(adapter)).eval())
    for out in (tmp_path / "cv", tmp_path / "ta"):
        assert not json.loads((out / "adapter_config.json").read_text()).get("use_bdlora")
        got = _logits(PeftModel.from_pretrained(_base(tiny_models["llama"]), str(out)).eval())
        assert float((got - oracle).abs().max()) <= 1e-4


def test_kasa_recomputes_the_truncated_base(tiny_models, peft_adapter, tmp_path):
    """KaSA: PEFT drops each adapted Linear's r smallest singular components when it adds the
    adapter (on load too), and ΔW = s·B·diag(d)·A; attach and merge do the same."""
    adapter = peft_adapter("llama", r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"],
                           kasa_config={})
    check_against_peft(tiny_models["llama"], adapter, tmp_path)
    res = invoke("--json", "inspect", adapter)
    assert res.code == 0 and "KaSA" in res.json["variants"]
    for args in (["convert", "--rank", "2", adapter, tmp_path / "cv"],
                 ["merge", "--to-adapter", adapter, "-o", tmp_path / "ta"]):
        res = invoke(*args)
        assert res.code == 5 and "KaSA" in res.stderr
    assert invoke("convert", "--dtype", "bfloat16", adapter, tmp_path / "bf").code == 0


def test_layer_replication_attaches_and_merges_as_separate_layers(tiny_models, peft_adapter,
                                                                  tmp_path):
    """PEFT stacks layers [0, 1, 1] sharing weights, each copy with its own LoRA; merge writes
    three layers of their own (PEFT's merge adds both copies' deltas into layer 1's weights)."""
    import json

    from adapterctl.core.runtime.attach import detach

    adapter = peft_adapter("llama", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                           layer_replication=[[0, 2], [1, 2]])
    check_against_peft(tiny_models["llama"], adapter, tmp_path)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["num_hidden_layers"] == 3
    model = _base(tiny_models["llama"])
    before = _logits(model)
    attach_adapter(model, adapter)
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    detach(model, "default")
    assert len(model.model.layers) == 2 and torch.equal(_logits(model), before)
    res = invoke("--json", "inspect", adapter, "--base", tiny_models["llama"])
    assert res.code == 0 and res.json["usable"], res.stdout
    assert invoke("merge", "--to-adapter", adapter, "-o", tmp_path / "ta").code == 5
