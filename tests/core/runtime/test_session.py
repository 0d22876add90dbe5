"""The one loader (core/runtime/session.py): which argument is the base, the one adapter-naming
rule, the early base check, and loading + attaching as attach and generate both do."""

from __future__ import annotations

import pytest
import torch

from adapterctl.core.runtime.session import (
    AdapterChoice,
    adapter_names,
    name_from_ref,
    open_session,
    split_base_and_adapters,
    summarize,
)
from adapterctl.errors import IncompatibleBaseError, UsageError


def test_names_come_from_folders_and_hub_ids_made_unique():
    assert adapter_names(["./runs/lora", "user/repo@v2", "other/lora/", "./x/.lora"]) == [
        "lora", "repo", "lora-2", "lora-3"]
    assert adapter_names(["./lora"]) == ["lora"]  # one adapter too: no special "default"
    assert adapter_names(["./base", "./__base__"]) == ["base-2", "__base__-2"]  # reserved
    assert adapter_names(["./a b/ä"]) == ["_"] and name_from_ref("user/my lora@main") == "my_lora"
    assert adapter_names(["./a", "./b"], ["x", None]) == ["x", "b"]
    assert adapter_names(["./a"], taken=["a"]) == ["a-2"]


@pytest.mark.parametrize("names, message", [
    (["x", "x"], "adapter names must be unique"),
    (["x"], "1 --name value(s) for 2 adapter(s)"),
])
def test_name_refusals(names, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adapter_names(["./a", "./b"], names)


def test_split_base_and_adapters(tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert split_base_and_adapters(["./base", "./lora"]) == ("./base", ["./lora"])
    assert split_base_and_adapters(["./lora"]) == (None, ["./lora"])
    assert split_base_and_adapters([str(adapter), "./b"]) == (None, [str(adapter), "./b"])
    assert split_base_and_adapters(["./a"], base="./b") == ("./b", ["./a"])
    with pytest.raises(UsageError, match="give at least one adapter"):
        split_base_and_adapters([])


def test_open_session_names_weights_and_summary(tiny_models, peft_adapter):
    a = peft_adapter("llama", seed=1, r=2, target_modules=["q_proj"])
    b = peft_adapter("llama", seed=2, r=2, target_modules=["v_proj"])
    steps: list[str] = []
    s = open_session(str(tiny_models["llama"]), [AdapterChoice(str(a)), AdapterChoice(str(b), 0.5)],
                     on_step=steps.append)
    assert [x.name for x in s.adapters] == [a.name, b.name]
    assert [x.weight for x in s.adapters] == [1.0, 0.5] and s.base_ref == str(tiny_models["llama"])
    assert steps[0] == f"loading base {tiny_models['llama']}" and steps[1].startswith("attaching")
    doc = summarize(s).to_dict()
    assert doc["active"] == {a.name: 1.0, b.name: 0.5} and doc["completions"] == []
    assert set(doc) == {"base", "adapters", "active", "attach_seconds", "completions"}
    assert s.adapters[0].to_dict() == {"name": a.name, "source": str(a), "path": str(a),
                                       "weight": 1.0, "warnings": [], "key_mapping": None}
    # the older calling style: references plus separate names and weights
    old = open_session(str(tiny_models["llama"]), [str(a), str(b)], names=["x", "y"],
                       weights=[1.0, 0.5])
    assert summarize(old).to_dict()["active"] == {"x": 1.0, "y": 0.5}
    ids = torch.tensor([[5, 9, 20]])
    with torch.no_grad():
        assert torch.equal(s.base.model(ids).logits, old.base.model(ids).logits)


def test_base_from_the_adapter_and_the_early_check(tiny_models, peft_adapter):
    gpt2_lora = peft_adapter("gpt2", r=2, target_modules=["c_attn"])
    steps: list[str] = []
    with pytest.raises(IncompatibleBaseError, match="none of its"):
        open_session(str(tiny_models["llama"]), [str(gpt2_lora)], on_step=steps.append)
    assert steps == []  # refused from the headers, before the base's weights load
    s = open_session(None, [str(gpt2_lora)])  # the adapter's base_model_name_or_path
    assert s.base_ref == str(tiny_models["gpt2"]) and s.require_tokenizer("x") is not None
