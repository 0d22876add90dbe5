"""core/adapter/compat.py: the one answer to "does this adapter fit this base?"."""

import json

import pytest
import torch

from adapterctl.core.adapter import compat as C
from adapterctl.core.adapter.compat import LayerKind
from adapterctl.core.adapter.problems import as_error, raise_first_error, warning
from adapterctl.errors import IncompatibleBaseError, InvalidAdapterError, UnsupportedError
from tests.helpers import invoke, write_adapter

# ----- layer kinds ------------------------------------------------------------------------------


def test_layer_kind_values_are_what_inspect_shows():
    assert [k.value for k in LayerKind] == ["linear", "conv1d-transposed", "embedding", "conv",
                                            "bnb4", "bnb8"]
    assert str(LayerKind.CONV1D_GPT2) == f"{LayerKind.CONV1D_GPT2}" == "conv1d-transposed"
    assert json.dumps({"kind": LayerKind.EMBEDDING}) == '{"kind": "embedding"}'
    assert LayerKind.CONV1D_GPT2.fan_in_fan_out and not LayerKind.LINEAR.fan_in_fan_out
    assert {k for k in LayerKind if k.matrix} == {LayerKind.LINEAR, LayerKind.CONV1D_GPT2,
                                                  LayerKind.BNB4, LayerKind.BNB8}
    assert {k for k in LayerKind if k.quantized} == {LayerKind.BNB4, LayerKind.BNB8}
    assert LayerKind.BNB4.lora_layout is LayerKind.CONV1D_GPT2.lora_layout is LayerKind.LINEAR


def test_lora_kind_from_the_tensors():
    assert C.lora_kind(True, (4, 100)) is LayerKind.EMBEDDING
    assert C.lora_kind(False, (4, 3, 3, 3)) is LayerKind.CONV
    assert C.lora_kind(False, (4, 64)) is LayerKind.LINEAR


@pytest.mark.parametrize("a, b, base, model_type, fan, kind", [
    ((4, 64), (192, 4), (64, 192), "gpt2", False, LayerKind.CONV1D_GPT2),  # c_attn (in, out)
    ((4, 64), (192, 4), (64, 192), "llama", False, LayerKind.CONV1D_GPT2),  # shape decides
    ((4, 64), (64, 4), (64, 64), "gpt2", False, LayerKind.CONV1D_GPT2),  # square: model type
    ((4, 64), (64, 4), (64, 64), "llama", False, LayerKind.LINEAR),
    ((4, 64), (32, 4), (32, 64), "gpt2", True, LayerKind.LINEAR),  # (out, in): Linear anyway
    ((4, 64), (64, 4), None, "llama", True, LayerKind.CONV1D_GPT2),  # no base: the config
    ((4, 64), (64, 4), None, "gpt2", False, LayerKind.CONV1D_GPT2),  # no base: the model type
    ((4, 64), (64, 4), None, None, False, LayerKind.LINEAR),
    ((4, 48), (192, 4), (64, 192), "gpt2", False, LayerKind.CONV1D_GPT2),  # fits neither: type
    ((4, 48), (32, 4), (32, 64), "llama", False, LayerKind.LINEAR),
])
def test_base_layer_kind(a, b, base, model_type, fan, kind):
    assert C.base_layer_kind(False, a, b, base, model_type, fan) is kind


def test_base_layer_kind_of_embeddings_and_convs_ignores_the_model_type():
    assert C.base_layer_kind(True, (4, 100), (16, 4), (100, 16), "gpt2") is LayerKind.EMBEDDING
    assert C.base_layer_kind(False, (4, 3, 3, 3), (8, 4, 1, 1), None, "gpt2") is LayerKind.CONV


# ----- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, a, b, expected", [
    (LayerKind.LINEAR, (4, 64), (32, 4), (32, 64)),
    (LayerKind.BNB4, (4, 64), (32, 4), (32, 64)),
    (LayerKind.CONV1D_GPT2, (4, 64), (192, 4), (64, 192)),
    (LayerKind.EMBEDDING, (4, 100), (16, 4), (100, 16)),
    (LayerKind.CONV, (4, 3, 5, 5), (8, 4, 1, 1), (8, 3, 5, 5)),  # A's in is a[1], not a[-1]
    (LayerKind.LINEAR, (4, 64), None, None),
    (LayerKind.LINEAR, (4,), (32, 4), None),
])
def test_expected_base_shape(kind, a, b, expected):
    assert C.expected_base_shape(kind, a, b) == expected


def test_check_shapes_accepts_a_fit_and_refuses_a_misfit_with_exit_6():
    assert C.check_shapes("m.v_proj", LayerKind.LINEAR, (4, 64), (32, 4), (32, 64), (32,)) is None
    p = C.check_shapes("m.v_proj", LayerKind.LINEAR, (4, 64), (64, 4), (32, 64), layer="Linear")
    assert (p.severity, p.code, p.exit_code) == ("error", "shape_mismatch", 6)
    assert p.message == ("m.v_proj: base weight is [32, 64] (Linear: in 64, out 32) but lora_A "
                         "[4, 64] and lora_B [64, 4] need [64, 64]")
    err = as_error(p, "my-lora")
    assert isinstance(err, IncompatibleBaseError) and err.exit_code == 6
    assert err.message.startswith("my-lora: m.v_proj: base weight") and err.hint == p.hint


def test_check_shapes_gpt2_conv1d():
    """Conv1D stores (in, out): A (r, in) and B (out, r) need the transpose of Linear's shape."""
    assert C.check_shapes("h.0.attn.c_attn", LayerKind.CONV1D_GPT2, (4, 64), (192, 4),
                          (64, 192)) is None
    p = C.check_shapes("h.0.attn.c_attn", LayerKind.CONV1D_GPT2, (4, 48), (192, 4), (64, 192))
    assert p.code == "shape_mismatch" and "(in 64, out 192)" in p.message
    assert "need [48, 192]" in p.message


def test_check_shapes_conv_kernel_and_lora_bias():
    assert C.check_shapes("conv", LayerKind.CONV, (4, 3, 3, 3), (8, 4, 1, 1), (8, 3, 3, 3)) is None
    kernel = C.check_shapes("conv", LayerKind.CONV, (4, 3, 5, 5), (8, 4, 1, 1), (8, 3, 3, 3))
    assert kernel.code == "shape_mismatch" and "need [8, 3, 5, 5]" in kernel.message
    bias = C.check_shapes("q", LayerKind.LINEAR, (4, 64), (32, 4), (32, 64), bias_shape=(64,))
    assert bias.code == "shape_mismatch" and "lora_B.bias [64] does not fit out=32" in bias.message


def test_check_layer():
    assert C.check_layer("q", LayerKind.LINEAR, LayerKind.CONV1D_GPT2, "Conv1D") is None
    assert C.check_layer("q", LayerKind.LINEAR, LayerKind.BNB8, "Linear8bitLt") is None
    none = C.check_layer("norm", LayerKind.LINEAR, None, "LlamaRMSNorm")
    assert none.code == "unsupported_layer" and none.exit_code == 6
    assert "norm: is a LlamaRMSNorm, which LoRA cannot wrap" in none.message
    wrong = C.check_layer("q", LayerKind.EMBEDDING, LayerKind.LINEAR, "Linear")
    assert wrong.code == "layer_kind_mismatch"
    assert "adapter holds embedding LoRA tensors but the base layer is Linear" in wrong.message


def test_missing_module_and_modules_present():
    p = C.missing_module("model.layers.0.q_proj", (4, 64), (64, 4))
    assert p.code == "module_not_in_base" and p.exit_code == 6
    assert p.message == "model.layers.0.q_proj: no such module in the base (lora_A [4, 64], lora_B [64, 4])"
    keys = {"transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"}
    assert C.check_modules_present(["transformer.h.0.attn.c_attn"], keys, False, "b", "gpt2") is None
    assert C.check_modules_present(["lm_head"], keys, True, "b", "gpt2") is None  # tied head
    assert C.check_modules_present([], keys, False, "b", "gpt2") is None
    p = C.check_modules_present(["model.layers.0.self_attn.q_proj"], keys, True, "base", "gpt2")
    assert p.code == "no_module_in_base" and p.exit_code == 6
    assert "none of its 1 LoRA modules exist in base (gpt2)" in p.message
    assert "transformer.h.0.attn.c_attn.weight" in p.message


def test_check_replacement():
    assert C.check_replacement("lm_head.weight", (384, 64), (384, 64)) is None
    gone = C.check_replacement("score.weight", (2, 64), None)
    assert gone.code == "replacement_not_in_base" and gone.exit_code == 6
    assert "score.weight: saved in the adapter (shape [2, 64]) but the base has no such" in gone.message
    resized = C.check_replacement("lm_head.weight", (400, 64), (384, 64))
    assert resized.code == "replacement_shape_mismatch" and resized.exit_code == 6
    assert "saved in the adapter as [400, 64] but the base parameter is [384, 64]" in resized.message


def test_check_token_rows():
    assert C.check_token_rows("embed", [3, 383], (2, 64), (384, 64)) is None
    for indices, rows in (([3, 384], (2, 64)), ([3, 5], (2, 32)), ([-1, 5], (2, 64))):
        p = C.check_token_rows("embed", indices, rows, (384, 64))
        assert p.code == "token_rows_mismatch" and p.exit_code == 6
        assert f"embed: token rows {list(rows)}" in p.message and "[384, 64]" in p.message


def test_as_error_raises_the_problems_error_class_and_raise_first_error_skips_warnings():
    assert isinstance(as_error(C.missing_module("x", None, None)), IncompatibleBaseError)
    from adapterctl.core.adapter.problems import error

    assert isinstance(as_error(error("bad", "m")), InvalidAdapterError)
    assert isinstance(as_error(error("u", "m", error=UnsupportedError)), UnsupportedError)
    raise_first_error([warning("w", "only a warning")])
    with pytest.raises(IncompatibleBaseError, match="src: x: no such module"):
        raise_first_error([warning("w", "w"), C.missing_module("x", None, None)], "src")


# ----- base names -------------------------------------------------------------------------------
SNAP = "/home/u/.cache/huggingface/hub/models--user--repo/snapshots/0123abcd"


@pytest.mark.parametrize("trained_on, given", [
    ("user/repo", "user/repo"),
    ("user/repo", "user/repo@main"),
    ("user/repo@v1.0", "user/repo"),
    ("user/repo", SNAP),
    ("user/repo", SNAP + "/"),
    ("user/repo@refs/pr/1", SNAP),
    ("gpt2", "/c/hub/models--gpt2/snapshots/e7da7f2"),
    ("/models/llama/", "/models/llama"),
    ("meta/llama", "/models/llama"),  # a local copy named like the repo
    (SNAP, "user/repo"),
])
def test_same_base(trained_on, given):
    assert C.same_base(trained_on, given)
    assert C.base_name_problem(trained_on, given) is None


@pytest.mark.parametrize("trained_on, given", [
    ("user/repo", "user/repo2"),
    ("user/repo", "/home/u/.cache/huggingface/hub/models--user--other/snapshots/0123abcd"),
    ("someone/other-model", "/models/llama"),
    ("/models/a", "/models/b"),
])
def test_other_base(trained_on, given):
    assert not C.same_base(trained_on, given)
    p = C.base_name_problem(trained_on, given)
    assert (p.severity, p.code, p.exit_code) == ("warning", "base_name_differs", 0)
    assert repr(trained_on) in p.message and repr(given) in p.message
    assert p.text.startswith(p.message) and "Shapes fit" in p.text


def test_same_folder_by_another_name(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "base")
    assert C.same_base(str(tmp_path / "base"), str(tmp_path / "alias"))


def test_no_name_no_warning():
    assert C.base_name_problem(None, "/models/llama") is None
    assert C.base_name_problem("user/repo", "") is None


def test_canonical_base():
    assert C.canonical_base("user/repo@main") == "user/repo"
    assert C.canonical_base(SNAP + "/") == "user/repo"
    assert C.canonical_base("/models/llama/") == "/models/llama"
    assert C.canonical_base("./a@b") == "./a@b"  # a local path keeps its '@'


# ----- one answer: the engine, merge and inspect agree ------------------------------------------


@pytest.mark.parametrize("make, a, b", [
    (lambda: torch.nn.Linear(64, 32), (4, 64), (32, 4)),
    (lambda: __import__("transformers").pytorch_utils.Conv1D(192, 64), (4, 64), (192, 4)),
    (lambda: torch.nn.Embedding(100, 16), (4, 100), (16, 4)),
    (lambda: torch.nn.Conv2d(3, 8, 3), (4, 3, 3, 3), (8, 4, 1, 1)),
])
def test_built_layer_and_headers_give_the_same_kind_and_shape(make, a, b):
    """The engine's kind of a built layer equals compat's kind from the stored weight's shape."""
    from adapterctl.core.runtime.layers import layer_kind, lora_base_shape

    layer = make()
    kind = layer_kind(layer)
    stored = tuple(layer.weight.shape)
    model_type = "gpt2" if kind is LayerKind.CONV1D_GPT2 else "llama"
    assert C.base_layer_kind(kind is LayerKind.EMBEDDING, a, b, stored, model_type) is kind
    assert lora_base_shape(layer, kind) == stored == C.expected_base_shape(kind, a, b)


def test_gpt2_misfit_is_refused_alike_by_inspect_merge_and_attach(tiny_models, tmp_path):
    p = "base_model.model.transformer.h.0.attn.c_attn"
    ad = write_adapter(tmp_path / "a", {"r": 4, "target_modules": ["c_attn"]},
                       {f"{p}.lora_A.weight": torch.randn(4, 48),
                        f"{p}.lora_B.weight": torch.randn(192, 4)})
    needs = "transformer.h.0.attn.c_attn: base weight is [64, 192]"
    inspected = invoke("--json", "inspect", ad, "--base", tiny_models["gpt2"])
    assert inspected.code == 6
    [problem] = [q for q in inspected.json["problems"] if q["code"] == "shape_mismatch"]
    assert needs in problem["message"] and "need [48, 192]" in problem["message"]
    merged = invoke("--json", "merge", tiny_models["gpt2"], ad, "--output", tmp_path / "m")
    assert merged.code == 6 and merged.json["error"]["type"] == "incompatible_base"
    assert needs in merged.json["error"]["message"] and "need [48, 192]" in merged.json["error"]["message"]
    attached = invoke("--json", "attach", tiny_models["gpt2"], ad)
    assert attached.code == 6 and needs in attached.json["error"]["message"]
    assert "(Conv1D: in 64, out 192)" in attached.json["error"]["message"]
    assert "need [48, 192]" in attached.json["error"]["message"]


def _tokens_adapter(path, indices):
    emb = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    return write_adapter(path, {"r": 2, "target_modules": ["q_proj"],
                                "trainable_token_indices": indices},
                         {emb: torch.randn(len(indices), 64), f"{q}.lora_A.weight": torch.randn(2, 64),
                          f"{q}.lora_B.weight": torch.randn(64, 2)})


def test_token_rows_past_the_vocabulary_are_refused_alike_by_merge_and_attach(tiny_models, tmp_path):
    """The base has 384 rows: index 400 fits nowhere (merge used to fail inside index_copy_)."""
    ad = _tokens_adapter(tmp_path / "a", [3, 400])
    merged = invoke("--json", "merge", tiny_models["llama"], ad, "--output", tmp_path / "m")
    attached = invoke("--json", "attach", tiny_models["llama"], ad)
    for res in (merged, attached):
        assert res.code == 6 and res.json["error"]["type"] == "incompatible_base"
        assert ("model.embed_tokens: token rows [2, 64] / max index 400 do not fit the embedding "
                "table [384, 64]") in res.json["error"]["message"]
    assert not (tmp_path / "m").exists()


def test_resized_replacement_is_refused_by_inspect_merge_and_attach(tiny_models, tmp_path):
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    ad = write_adapter(tmp_path / "a", {"r": 2, "target_modules": ["q_proj"],
                                        "modules_to_save": ["lm_head"]},
                       {"base_model.model.lm_head.weight": torch.randn(400, 64),
                        f"{q}.lora_A.weight": torch.randn(2, 64),
                        f"{q}.lora_B.weight": torch.randn(64, 2)})
    says = "lm_head.weight: saved in the adapter as [400, 64] but the base parameter is [384, 64]"
    inspected = invoke("--json", "inspect", ad, "--base", tiny_models["llama"])
    assert inspected.code == 6 and not inspected.json["base"]["compatible"]
    assert any(p["code"] == "replacement_shape_mismatch" and says in p["message"]
               for p in inspected.json["problems"])
    for res in (invoke("--json", "merge", tiny_models["llama"], ad, "--output", tmp_path / "m"),
                invoke("--json", "attach", tiny_models["llama"], ad)):
        assert res.code == 6 and says in res.json["error"]["message"]
