"""core/adapter/validate.py: one list of problems. Every refusal of the loader (attach, merge,
convert) is "not usable" in inspect, with the same exit code and message, and check refuses the
broken files too."""

import pytest
import torch

from adapterctl.core.adapter.inspect import inspect_adapter
from adapterctl.core.lora.loaded import load_adapter
from adapterctl.errors import AdapterctlError
from tests.helpers import invoke, write_adapter

Q = "base_model.model.model.layers.0.self_attn.q_proj"
EMB = "base_model.model.model.embed_tokens"


def _lora(r=2, i=64, o=64, b_rank=None):
    return {f"{Q}.lora_A.weight": torch.ones(r, i), f"{Q}.lora_B.weight": torch.ones(o, b_rank or r)}


def _rows(n):
    return {**_lora(), f"{EMB}.token_adapter.trainable_tokens_delta": torch.ones(n, 64)}


BD = {"use_bdlora": {"target_modules_bd_a": ["q_proj"], "target_modules_bd_b": [], "nblocks": 2}}
BD_BOTH = {"use_bdlora": {"target_modules_bd_a": ["q_proj"], "target_modules_bd_b": ["q_proj"], "nblocks": 2}}
EXPERTS = "base_model.model.model.layers.0.mlp.experts"
#: target_parameters LoRA on a fused experts parameter: A (r·E, in), B (out, r·E) (spec 5.6)
TP = {"target_modules": [], "target_parameters": ["mlp.experts.down_proj"]}


def _experts(rows, cols=None):
    return {f"{EXPERTS}.lora_A.weight": torch.ones(rows, 8), f"{EXPERTS}.lora_B.weight": torch.ones(16, cols or rows)}

#: case -> (config, tensors, problem code, exit code); every one of them is a loader refusal
REFUSALS = {
    "rank_of_A": ({"r": 4}, _lora(2), "rank_mismatch", 4),
    "rank_of_B": ({"r": 2}, _lora(2, b_rank=4), "rank_mismatch", 4),
    "unpaired": ({"r": 2}, {f"{Q}.lora_A.weight": torch.ones(2, 64)}, "unpaired_lora", 4),
    "orphan": ({"r": 2}, {f"{Q}.lora_magnitude_vector": torch.ones(64)}, "orphan_tensor", 4),
    "one_dimension": ({"r": 2}, {f"{Q}.lora_A.weight": torch.ones(2), f"{Q}.lora_B.weight": torch.ones(64, 2)},
                      "bad_shape", 4),
    "magnitude_without_dora": ({"r": 2}, {**_lora(), f"{Q}.lora_magnitude_vector": torch.ones(64)},
                               "dora_mismatch", 4),
    "dora_without_magnitude": ({"r": 2, "use_dora": True}, _lora(), "dora_missing_magnitude", 4),
    "kasa_without_diag": ({"r": 2, "kasa_config": {}}, _lora(), "kasa_missing_diag", 4),
    "diag_without_kasa": ({"r": 2}, {**_lora(), f"{Q}.lora_diag": torch.ones(2)}, "kasa_mismatch", 4),
    "diag_of_another_rank": ({"r": 2, "kasa_config": {}}, {**_lora(), f"{Q}.lora_diag": torch.ones(3)},
                             "kasa_mismatch", 4),
    "token_rows_without_indices": ({"r": 2}, _rows(3), "trainable_tokens_without_indices", 4),
    "token_rows_mismatch": ({"r": 2, "trainable_token_indices": [1, 2]}, _rows(3),
                            "trainable_tokens_mismatch", 4),
    "token_indices_for_another_module": ({"r": 2, "trainable_token_indices": {"lm_head": [1, 2, 3]}},
                                         _rows(3), "trainable_tokens_without_indices", 4),
    "bdlora_blocks": ({"r": 3, **BD}, _lora(3, i=32), "bdlora_blocks", 4),
    "bdlora_both_factors": ({"r": 2, **BD_BOTH}, _lora(2, i=32), "invalid_input", 4),
    "experts_rank": ({"r": 2, **TP}, _experts(3), "rank_mismatch", 4),
    "experts_unpaired": ({"r": 2, **TP}, {f"{EXPERTS}.lora_A.weight": torch.ones(4, 8)}, "unpaired_lora", 4),
    "experts_dora": ({"r": 2, "use_dora": True, **TP}, _experts(4), "expert_variant", 5),
    "unknown_key": ({"r": 2}, {**_lora(), f"{Q}.lora_X.weight": torch.ones(2)}, "unknown_key", 4),
    "empty": ({"r": 2}, {}, "empty_adapter", 4),
    "unsupported_variant": ({"r": 2, "use_qalora": True}, _lora(), "unsupported_variant", 5),
    "needs_conversion": ({"r": 2, "init_lora_weights": "loftq"}, _lora(), "needs_conversion", 5),
    "unknown_init": ({"r": 2, "init_lora_weights": "magic"}, _lora(), "unknown_init", 5),
}
#: refusals of the tensors (not of the config, whose variants check judges engine by engine)
TENSOR_CASES = [c for c, v in REFUSALS.items() if v[3] == 4]


@pytest.mark.parametrize("case", REFUSALS)
def test_every_loader_refusal_is_not_usable_in_inspect(tmp_path, case):
    config, tensors, code, exit_code = REFUSALS[case]
    folder = write_adapter(tmp_path / "a", config, tensors)
    with pytest.raises(AdapterctlError) as err:
        load_adapter(folder)
    assert err.value.exit_code == exit_code
    summary = inspect_adapter(folder)
    assert not summary.usable and summary.exit_code == exit_code
    first = next(p for p in summary.problems if p.severity == "error")
    assert first.code == code
    assert err.value.message == f"{folder}: {first.message}"  # one rule, one message (+ the folder)
    assert err.value.hint == first.hint
    res = invoke("--json", "inspect", folder)
    assert res.code == exit_code and res.json["usable"] is False and res.json["error"]["type"] == code
    human = invoke("inspect", folder)
    assert human.code == exit_code and "not usable" in human.stdout and "Traceback" not in human.stderr


@pytest.mark.parametrize("case", TENSOR_CASES)
def test_check_refuses_what_the_loader_refuses(tmp_path, case):
    config, tensors, code, exit_code = REFUSALS[case]
    folder = write_adapter(tmp_path / "a", config, tensors)
    res = invoke("--json", "check", folder, "--engine", "vllm")
    assert res.code == exit_code and res.json["ok"] is False, res.stdout
    assert inspect_adapter(folder).problems[0].message in res.json["error"]["message"]


def test_a_missing_weights_file_is_the_same_refusal(tmp_path):
    folder = write_adapter(tmp_path / "a", {"r": 2}, _lora())
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterctlError) as err:
        load_adapter(folder)
    summary = inspect_adapter(folder)
    assert err.value.exit_code == summary.exit_code == 3
    assert summary.problems[0].code == "missing_weights" and summary.problems[0].message == err.value.message
    assert invoke("--json", "check", folder).code == 3


def test_a_valid_adapter_has_no_problems_anywhere(tmp_path):
    folder = write_adapter(tmp_path / "a", {"r": 2, "trainable_token_indices": [1, 2, 3]}, _rows(3))
    assert inspect_adapter(folder).problems == []
    loaded = load_adapter(folder)
    assert set(loaded.modules) == {"model.layers.0.self_attn.q_proj"}
    assert loaded.trainable_tokens["model.embed_tokens"][0] == [1, 2, 3]
