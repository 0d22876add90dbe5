"""inspect on real PEFT adapters and on broken ones."""

import json
import shutil
import struct

import pytest
import torch

from tests.helpers import invoke, run_cli, write_adapter


def test_peft_adapter_summary(peft_adapter):
    ad = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3})
    res = invoke("--json", "inspect", ad)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] and doc["peft_type"] == "LORA" and doc["r"] == 4 and doc["lora_alpha"] == 8
    mods = {m["name"]: m for m in doc["modules"]}
    assert len(mods) == 4
    q0, q1 = mods["model.layers.0.self_attn.q_proj"], mods["model.layers.1.self_attn.q_proj"]
    v0 = mods["model.layers.0.self_attn.v_proj"]
    assert (q0["r"], q0["alpha"], q0["scaling"]) == (4, 8, 2.0)
    assert (q1["alpha"], q1["scaling"]) == (3, 0.75)
    assert (v0["r"], v0["scaling"], v0["a_shape"], v0["b_shape"]) == (2, 4.0, [2, 64], [32, 2])
    assert doc["num_parameters"] == sum(
        m["a_shape"][0] * m["a_shape"][1] + m["b_shape"][0] * m["b_shape"][1] for m in mods.values())
    assert doc["problems"] == []


def test_rslora_dora_gpt2_and_base_check(peft_adapter, tiny_models):
    ad = peft_adapter("gpt2", r=4, lora_alpha=8, use_rslora=True, use_dora=True,
                      target_modules=["c_attn", "c_proj"])
    doc = invoke("--json", "inspect", ad, "--base", tiny_models["gpt2"]).json
    assert doc["ok"] and "DoRA" in doc["variants"] and "rsLoRA" in doc["variants"]
    m = doc["modules"][0]
    assert m["kind"] == "conv1d-transposed" and m["dora"] and m["scaling"] == 8 / 2
    assert doc["base"]["compatible"]


def test_embedding_modules_to_save_and_extras(peft_adapter):
    ad = peft_adapter("llama", r=4, target_modules=["embed_tokens", "q_proj"],
                      modules_to_save=["lm_head"])
    doc = invoke("--json", "inspect", ad).json
    kinds = {m["name"]: m["kind"] for m in doc["modules"]}
    assert kinds["model.embed_tokens"] == "embedding"
    assert doc["extras"]["modules_to_save"] == ["lm_head.weight"]


def test_wrong_base_is_incompatible(peft_adapter, tiny_models):
    ad = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    res = invoke("--json", "inspect", ad, "--base", tiny_models["gpt2"])
    assert res.code == 6
    codes = {p["code"] for p in res.json["problems"]}
    assert "module_not_in_base" in codes and res.json["ok"] is False


def test_shape_mismatch_against_base(tmp_path, tiny_models):
    ad = write_adapter(tmp_path / "a", {"r": 2, "target_modules": ["q_proj"]}, {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 48),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 2)})
    res = invoke("--json", "inspect", ad, "--base", tiny_models["llama"])
    assert res.code == 6
    assert any(p["code"] == "shape_mismatch" and "q_proj" in p["message"] for p in res.json["problems"])


def _lora(name, r, i, o):
    return {f"base_model.model.{name}.lora_A.weight": torch.ones(r, i),
            f"base_model.model.{name}.lora_B.weight": torch.ones(o, r)}


@pytest.mark.parametrize("config,tensors,code,exit_code", [
    ({"r": 4}, _lora("model.layers.0.self_attn.q_proj", 2, 64, 64), "rank_mismatch", 4),
    ({"r": 2}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 64)},
     "unpaired_lora", 4),
    ({"r": 2, "use_dora": False}, {**_lora("model.layers.0.self_attn.q_proj", 2, 64, 64),
      "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(64)},
     "dora_mismatch", 4),
    ({"r": 2}, {**_lora("model.layers.0.self_attn.q_proj", 2, 64, 64),
                "base_model.model.model.layers.0.self_attn.q_proj.lora_X.weight": torch.ones(2)},
     "unknown_key", 4),
    ({"r": 2, "use_qalora": True}, _lora("model.layers.0.self_attn.q_proj", 2, 64, 64),
     "unsupported_variant", 5),
    ({"r": 2, "alora_invocation_tokens": [5, 6]}, _lora("model.layers.0.self_attn.q_proj", 2, 64, 64),
     "unsupported_variant", 5),
    ({"r": 2, "init_lora_weights": "corda"}, _lora("model.layers.0.self_attn.q_proj", 2, 64, 64),
     "needs_conversion", 5),
    ({"r": 2}, {}, "empty_adapter", 4),
])
def test_problems(tmp_path, config, tensors, code, exit_code):
    ad = write_adapter(tmp_path / "a", config, tensors)
    res = invoke("--json", "inspect", ad)
    assert res.code == exit_code
    assert code in {p["code"] for p in res.json["problems"]}
    human = invoke("inspect", ad)
    assert human.code == exit_code and code in human.stdout and "Traceback" not in human.stderr


def test_rank_pattern_resolves_mismatch_away(tmp_path):
    ad = write_adapter(tmp_path / "a", {"r": 4, "rank_pattern": {"q_proj": 2}},
                       _lora("model.layers.0.self_attn.q_proj", 2, 64, 64))
    assert invoke("--json", "inspect", ad).code == 0


def test_pissa_is_flagged_but_usable(tmp_path):
    ad = write_adapter(tmp_path / "a", {"r": 2, "init_lora_weights": "pissa"},
                       _lora("model.layers.0.self_attn.q_proj", 2, 64, 64))
    res = invoke("--json", "inspect", ad)
    assert res.code == 0 and res.json["problems"][0]["code"] == "mutating_init"


@pytest.mark.parametrize("peft_type,text", [("IA3", "not a LoRA adapter"), ("LOKR", "not a LoRA"),
                                            ("WHATEVER", "not a LoRA adapter")])
def test_other_peft_types(tmp_path, peft_type, text):
    d = tmp_path / "a"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    res = invoke("--json", "inspect", d)
    assert res.code == 5 and text in res.json["problems"][0]["message"]


def test_check_values_reports_nan_and_norms(tmp_path):
    t = _lora("model.layers.0.self_attn.q_proj", 2, 64, 64)
    good = write_adapter(tmp_path / "good", {"r": 2, "lora_alpha": 4}, t)
    doc = invoke("--json", "inspect", good, "--check-values").json
    m = doc["modules"][0]
    # B A is all 2s (64x64), scaled by 2: ||.||_F = 2 * 2 * 64
    assert m["nonfinite"] == 0 and m["delta_norm"] == pytest.approx(256.0)
    t[next(iter(t))][0, 0] = float("nan")
    bad = write_adapter(tmp_path / "bad", {"r": 2}, t)
    res = invoke("--json", "inspect", bad, "--check-values")
    assert res.code == 4 and res.json["problems"][0]["code"] == "nonfinite"


# ----- bad input: clear message, right exit code, no traceback ------------------------------

def _adapter_dir(tmp_path, peft_adapter):
    src = peft_adapter("llama", r=2, target_modules=["q_proj"])
    dst = tmp_path / "ad"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case,exit_code,text", [
    ("missing_path", 3, "no such adapter directory"),
    ("file_not_dir", 4, "is a file"),
    ("broken_json", 4, "not valid JSON"),
    ("json_not_object", 4, "must hold a JSON object"),
    ("truncated_weights", 4, "not a valid safetensors file"),
    ("header_too_long", 4, "header claims"),
    ("header_not_json", 4, "not JSON"),
    ("missing_weights", 3, "no adapter_model.safetensors"),
    ("missing_config", 3, "no adapter_config.json"),
    ("wrong_type", 4, "'r' must be a positive integer"),
])
def test_bad_input(tmp_path, peft_adapter, case, exit_code, text):
    d = _adapter_dir(tmp_path, peft_adapter)
    w = d / "adapter_model.safetensors"
    target = d
    if case == "missing_path":
        target = tmp_path / "nowhere"
    elif case == "file_not_dir":
        target = w
    elif case == "broken_json":
        (d / "adapter_config.json").write_text('{"peft_type": "LORA",')
    elif case == "json_not_object":
        (d / "adapter_config.json").write_text("[1, 2]")
    elif case == "truncated_weights":
        w.write_bytes(w.read_bytes()[:-10])
    elif case == "header_too_long":
        w.write_bytes(struct.pack("<Q", 10**12) + w.read_bytes()[8:])
    elif case == "header_not_json":
        data = w.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        w.write_bytes(data[:8] + b"x" * n + data[8 + n:])
    elif case == "missing_weights":
        w.unlink()
    elif case == "missing_config":
        (d / "adapter_config.json").unlink()
    elif case == "wrong_type":
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["r"] = "eight"
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    res = invoke("--json", "inspect", target)
    assert res.code == exit_code, res.stdout
    doc = res.json
    assert doc["ok"] is False
    msg = doc["error"]["message"] if "error" in doc else doc["problems"][0]["message"]
    assert text in msg
    human = invoke("inspect", target)
    assert human.code == exit_code and "Traceback" not in human.stderr + human.stdout
    assert text in human.stderr + human.stdout


def test_inspect_never_imports_torch(peft_adapter, tiny_models):
    ad = peft_adapter("llama", r=2, target_modules=["q_proj"])
    code = (
        "import sys\n"
        "from adapterctl.cli.app import main\n"
        f"sys.argv = ['adapterctl', '--json', 'inspect', {str(ad)!r}, '--base', "
        f"{str(tiny_models['llama'])!r}, '--check-values']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes', "
        "'huggingface_hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    from tests.helpers import run_python

    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_subprocess_entry_point(peft_adapter):
    ad = peft_adapter("llama", r=2, target_modules=["q_proj"])
    res = run_cli("inspect", ad, "--all")
    assert res.code == 0 and "model.layers.0.self_attn.q_proj" in res.stdout
    res = run_cli("inspect", ad)  # layers that agree share a row
    assert res.code == 0 and "model.layers.{0-1}.self_attn.q_proj" in res.stdout


@pytest.mark.parametrize("field,value", [("target_modules", "("), ("exclude_modules", "[a-"),
                                         ("rank_pattern", {"(": 2}), ("layers_pattern", "(")])
def test_invalid_regex_in_config_is_invalid_input(tmp_path, field, value):
    ad = write_adapter(tmp_path / "a", {"r": 2, field: value},
                       _lora("model.layers.0.self_attn.q_proj", 2, 64, 64))
    res = invoke("--json", "inspect", ad)
    assert res.code == 4 and field in res.json["error"]["message"]
    assert "regular expression" in res.json["error"]["message"]


def test_unusable_json_carries_an_error_object(tmp_path):
    ad = write_adapter(tmp_path / "a", {"r": 4}, _lora("model.layers.0.self_attn.q_proj", 2, 64, 64))
    doc = invoke("--json", "inspect", ad).json
    assert doc["ok"] is False and doc["usable"] is False
    assert doc["error"]["type"] == "rank_mismatch" and doc["error"]["exit_code"] == 4
    assert doc["modules"]  # the summary is still there for scripts


def test_markup_like_text_is_printed_verbatim(tmp_path):
    ad = write_adapter(tmp_path / "[INST] a [/INST]", {"r": 2},
                       _lora("model.layers.0.self_attn.q_proj", 2, 64, 64))
    res = invoke("inspect", ad)
    assert res.code == 0 and "a [/INST]" in res.stdout  # printed, not parsed as markup
