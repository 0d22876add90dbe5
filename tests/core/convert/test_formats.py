"""convert --to/--from gguf|mlx without the engines: round trips, layout rules, every refusal."""

from __future__ import annotations

import sys

import pytest
from safetensors.torch import load_file

from tests.helpers import invoke

PLAIN = [  # (base, lora kwargs): the plain-LoRA test adapters
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"])),
    ("qwen2", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"])),
    ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"])),
]


def _tensors(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
@pytest.mark.parametrize("base,kw", PLAIN, ids=["llama", "qwen2", "gpt2"])
def test_round_trip_is_bit_exact(fmt, base, kw, tiny_models, peft_adapter, tmp_path):
    lora = peft_adapter(base, **kw)
    mid = tmp_path / ("x.gguf" if fmt == "gguf" else "x")
    res = invoke("convert", lora, mid, "--to", fmt, "--base", tiny_models[base])
    assert res.code == 0, res.stdout + res.stderr
    back = tmp_path / "back"
    res = invoke("--json", "convert", "--from", fmt, "--base", tiny_models[base], mid, back)
    assert res.code == 0, res.stdout + res.stderr
    a, b = _tensors(lora), _tensors(back)
    assert sorted(a) == sorted(b)
    assert all(a[k].equal(b[k]) for k in a)
    assert res.json["r"] == kw["r"] and res.json["lora_alpha"] == kw["lora_alpha"]
    assert invoke("inspect", back).code == 0


def test_llama_qk_rows_are_permuted_and_scales_folded(tiny_models, peft_adapter):
    """lora_b of q/k carries llama.cpp's rotary row order; rsLoRA's scaling is folded so that
    alpha/r (llama.cpp's rule) gives PEFT's delta."""
    from adapterctl.core.convert.draft import read_draft, view_adapter
    from adapterctl.core.convert.gguf import draft_to_gguf_tensors
    from adapterctl.core.engine_rules.gguf_arch import permute_rows, read_gguf_base

    lora = peft_adapter("llama", r=4, lora_alpha=8, use_rslora=True, rank_pattern={"k_proj": 2},
                        target_modules=["q_proj", "k_proj"])
    draft = read_draft(lora)
    facts = read_gguf_base(tiny_models["llama"])
    tensors, alpha, folded = draft_to_gguf_tensors(draft, facts)
    assert alpha == 8 and len(folded) == 4
    for path, w in view_adapter(draft).modules.items():
        kind = "attn_q" if path.endswith("q_proj") else "attn_k"
        name = f"blk.{path.split('.')[2]}.{kind}.weight"
        a, b = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
        delta = (w.B @ w.A).numpy() * w.scaling
        heads_kv = facts.n_head if kind == "attn_q" else facts.n_head_kv
        expect = permute_rows(delta, facts.n_head, heads_kv)
        assert abs((b @ a) * (alpha / w.r) - expect).max() < 1e-6


def test_gguf_hands_what_llama_cpp_cannot_express_to_convert_for(tiny_models, peft_adapter,
                                                                  tmp_path):
    """DoRA and modules_to_save go through ``convert --for llama.cpp`` first, automatically (DoRA
    to LoRA by SVD with its error reported; a saved lm_head as an exact full-rank LoRA)."""
    from adapterctl.io.formats.gguf_adapter import read_gguf_adapter

    for kw, step_note in ((dict(use_dora=True), "DoRA -> LoRA"),
                          (dict(modules_to_save=["lm_head"]), "LoRA on lm_head")):
        lora = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj"], **kw)
        out = tmp_path / f"{next(iter(kw))}.gguf"
        res = invoke("--json", "convert", lora, out, "--to", "gguf", "--base", tiny_models["llama"])
        assert res.code == 0, res.stdout + res.stderr
        assert res.json["steps"] == ["for-llama.cpp", "to-gguf"]
        assert any(step_note in n for n in res.json["notes"]), res.json["notes"]
        assert all(k.endswith((".lora_a", ".lora_b")) for k in read_gguf_adapter(out).tensors)


def test_gguf_refuses_what_no_lora_can_hold_naming_the_module(tiny_models, peft_adapter, tmp_path):
    lora = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True)
    res = invoke("--json", "convert", lora, tmp_path / "x.gguf", "--to", "gguf", "--base",
                 tiny_models["llama"])
    err = res.json["error"]
    assert res.code == 5 and "lora_B biases" in err["message"] and "q_proj" in err["message"]
    assert "--drop-unsupported" in err["hint"] and not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("fmt,target,needle", [
    ("gguf", "embed_tokens", "ties lm_head"), ("gguf", "lm_head", "no separate output"),
    ("mlx", "embed_tokens", "tied lm_head"), ("mlx", "lm_head", "no lm_head module"),
])
def test_tied_embedding_refusals(fmt, target, needle, tiny_models, peft_adapter, tmp_path):
    lora = peft_adapter("llama_tied", r=4, lora_alpha=8, target_modules=[target, "q_proj"])
    res = invoke("--json", "convert", lora, tmp_path / "x", "--to", fmt, "--base",
                 tiny_models["llama_tied"])
    assert res.code == 5 and needle in res.json["error"]["message"], res.stdout


def test_mlx_refuses_lora_bias_and_embedding_dora(tiny_models, peft_adapter, tmp_path):
    bias = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True)
    res = invoke("--json", "convert", bias, tmp_path / "a", "--to", "mlx", "--base",
                 tiny_models["llama"])
    assert res.code == 5 and "lora_B bias" in res.json["error"]["message"]
    dora = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["embed_tokens"],
                        use_dora=True)
    res = invoke("--json", "convert", dora, tmp_path / "b", "--to", "mlx", "--base",
                 tiny_models["llama"])
    assert res.code == 5 and "DoRA on an embedding" in res.json["error"]["message"]


@pytest.mark.parametrize("args,needle", [
    (["--from", "gguf", "S", "O"], "--from gguf needs --base"),
    (["--to", "onnx", "S", "O"], "not a known format"),
    (["--to", "gguf", "--from", "gguf", "S", "O"], "name the same format"),
    (["--outtype", "q8_0", "S", "O"], "--outtype applies to --to gguf only"),
    (["--outtype", "q4", "--to", "gguf", "S", "O"], "--outtype 'q4' is not supported"),
    (["--to", "gguf", "--dtype", "float16", "S", "O"], "--dtype applies to PEFT outputs"),
    (["--from", "mlx", "--pissa-init", "I", "S", "O"], "cannot be combined"),
])
def test_format_usage_errors_exit_2(args, needle):
    res = invoke("--json", "convert", *args)
    assert res.code == 2 and needle in res.json["error"]["message"], res.stdout


def test_gguf_needs_the_base_and_a_known_architecture(peft_adapter, tiny_models, tmp_path):
    import json
    import shutil

    lora = tmp_path / "lora"
    shutil.copytree(peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj"]), lora)
    cfg_doc = json.loads((lora / "adapter_config.json").read_text())
    cfg_doc["base_model_name_or_path"] = "someone/not-here"
    (lora / "adapter_config.json").write_text(json.dumps(cfg_doc))
    res = invoke("--json", "convert", lora, tmp_path / "x.gguf", "--to", "gguf")
    assert res.code == 2 and "pass --base" in res.json["error"]["message"]
    cfg = tiny_models["llama"] / "config.json"
    other = tmp_path / "base"
    other.mkdir()
    (other / "config.json").write_text(cfg.read_text().replace("LlamaForCausalLM", "FooForLM"))
    (other / "model.safetensors").symlink_to(tiny_models["llama"] / "model.safetensors")
    res = invoke("--json", "convert", lora, tmp_path / "x.gguf", "--to", "gguf", "--base", other)
    assert res.code == 5 and "'FooForLM' is not one" in res.json["error"]["message"]


def test_missing_gguf_package_exits_7(monkeypatch):
    from adapterctl.errors import MissingDependencyError
    from adapterctl.io.formats.gguf_adapter import import_gguf

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingDependencyError) as err:
        import_gguf()
    assert err.value.exit_code == 7 and "adapterctl[gguf]" in err.value.hint


def test_inspect_recognises_gguf_and_mlx_without_torch(peft_adapter, tiny_models, tmp_path):
    from tests.helpers import run_cli

    lora = peft_adapter("llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    for fmt, out in (("gguf", tmp_path / "a.gguf"), ("mlx", tmp_path / "m")):
        assert invoke("convert", lora, out, "--to", fmt, "--base", tiny_models["llama"]).code == 0
        res = invoke("--json", "inspect", out)
        doc = res.json
        assert res.code == 0 and doc["format"] == fmt and len(doc["modules"]) == 4
        assert f"--from {fmt}" in doc["convert"]
    probe = ("import sys, runpy; sys.argv=['adapterctl','inspect',sys.argv[1]]\n"
             "try: runpy.run_module('adapterctl', run_name='__main__')\n"
             "except SystemExit: pass\n"
             "assert 'torch' not in sys.modules and 'gguf' not in sys.modules\n")
    import subprocess

    from tests.helpers import REPO

    for out in (tmp_path / "a.gguf", tmp_path / "m"):
        proc = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True,
                              text=True, cwd=REPO)
        assert proc.returncode == 0 and "convert --from" in proc.stdout, proc.stderr
    assert run_cli("inspect", tmp_path / "a.gguf").code == 0


def test_inspect_refuses_a_base_model_gguf(tmp_path):
    from adapterctl.io.formats.gguf_adapter import import_gguf

    gguf = import_gguf()
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_type("model")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = invoke("--json", "inspect", tmp_path / "m.gguf")
    assert res.code == 4 and "not a llama.cpp LoRA adapter" in res.json["error"]["message"]


def test_inspect_gguf_adapter_with_a_tensor_outside_the_lora_pairs(tmp_path):
    """A tensor that is neither lora_a nor lora_b is listed as its own module, not a crash."""
    import numpy as np

    from adapterctl.io.formats.gguf_adapter import import_gguf

    gguf = import_gguf()
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 16), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.ones((16, 4), dtype=np.float32))
    w.add_tensor("token_embd.weight", np.ones((8, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = invoke("--json", "inspect", tmp_path / "a.gguf")
    assert res.code == 0, res.stdout
    modules = {m["name"]: m for m in res.json["modules"]}
    assert modules["blk.0.attn_q.weight"]["r"] == 4
    assert modules["token_embd"]["a_shape"] is None and modules["token_embd"]["dtype"] == "F32"
