"""``merge --to gguf`` without llama.cpp: the GGUF's tensors are our safetensors merge's values
(llama.cpp's names, the Llama q/k permutation), its types as asked, its metadata and tokenizer as
llama.cpp reads them; every refusal exits with its code and leaves nothing behind. llama.cpp
itself runs these files in tests/interop/test_llama_cpp_merged.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, invoke

BASE, UPPER, DRAGON = REPO / "examples/tiny-base", REPO / "examples/upper-lora", REPO / "examples/dragon-dora"


def read_gguf(path: Path) -> tuple[dict, dict, dict]:
    """(metadata, name -> float32 array in numpy order, name -> ggml type) of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arrays, types = {}, {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arrays[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    return meta, arrays, types


def _nothing_left(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def merged_st(tmp_path_factory):
    """The float32 safetensors merges the GGUFs must hold, by adapter."""
    from safetensors.numpy import load_file

    root = tmp_path_factory.mktemp("st")
    out = {}
    for lora in (UPPER, DRAGON):
        res = invoke("merge", BASE, lora, "--dtype", "float32", "-o", root / lora.name)
        assert res.code == 0, res.stderr
        out[lora.name] = load_file(str(root / lora.name / "model.safetensors"))
    return out


@pytest.mark.parametrize("lora", [UPPER, DRAGON], ids=["lora", "dora-rslora"])
def test_f32_gguf_holds_the_merge_under_llama_cpp_names(merged_st, lora, tmp_path):
    from adapterctl.core.engine_rules.gguf_arch import permute_rows

    res = invoke("--json", "merge", BASE, lora, "--to", "gguf", "--outtype", "f32", "-o", tmp_path / "m.gguf")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] and doc["arch"] == "llama" and doc["tokenizer_pre"] == "gpt-2"
    assert doc["tensors_written"] == 39 and doc["tensors_merged"] == (28 if lora == UPPER else 16)
    assert doc["ollama_modelfile"].splitlines()[0] == "FROM ./m.gguf"
    meta, arrays, types = read_gguf(tmp_path / "m.gguf")
    st = merged_st[lora.name]
    assert set(types.values()) == {"F32"}
    assert np.array_equal(arrays["token_embd.weight"], st["model.embed_tokens.weight"])
    assert np.array_equal(arrays["output.weight"], st["lm_head.weight"])
    for i in range(4):
        p = f"model.layers.{i}."
        q, k = st[p + "self_attn.q_proj.weight"], st[p + "self_attn.k_proj.weight"]
        assert np.array_equal(arrays[f"blk.{i}.attn_q.weight"], permute_rows(q, 6, None))
        assert np.array_equal(arrays[f"blk.{i}.attn_k.weight"], permute_rows(k, 2, None))
        assert not np.array_equal(arrays[f"blk.{i}.attn_q.weight"], q)  # the permutation did something
        for ours, theirs in [("attn_v", "self_attn.v_proj"), ("ffn_up", "mlp.up_proj"),
                             ("ffn_down", "mlp.down_proj"), ("attn_norm", "input_layernorm")]:
            assert np.array_equal(arrays[f"blk.{i}.{ours}.weight"], st[p + theirs + ".weight"]), ours
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["llama.block_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 32 and meta["general.file_type"] == 0
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(meta["tokenizer.ggml.tokens"]) == 872
    assert meta["tokenizer.ggml.eos_token_id"] == 1 and meta["tokenizer.ggml.merges"]


@pytest.mark.parametrize("outtype,types,tol", [
    ("f16", {"F32", "F16"}, 1e-3), ("bf16", {"F32", "BF16"}, 8e-3), ("q8_0", {"F32", "Q8_0"}, 1e-2)])
def test_outtypes_are_one_rounding_of_the_f32_merge(merged_st, tmp_path, outtype, types, tol):
    res = invoke("--json", "merge", BASE, UPPER, "--to", "gguf", "--outtype", outtype, "-o", tmp_path / "m.gguf")
    assert res.code == 0, res.stdout + res.stderr
    meta, arrays, got = read_gguf(tmp_path / "m.gguf")
    assert set(got.values()) == types and got["blk.0.attn_norm.weight"] == "F32"
    st = merged_st[UPPER.name]
    a, b = arrays["blk.1.ffn_down.weight"], st["model.layers.1.mlp.down_proj.weight"]
    assert 0 < float(np.abs(a - b).max() / np.abs(b).max()) <= tol


def test_tied_base_has_no_output_and_qwen2_biases_map(tiny_models, peft_adapter, tmp_path):
    lora = peft_adapter("llama_tied", r=4, target_modules=["q_proj", "v_proj"])
    res = invoke("--json", "merge", tiny_models["llama_tied"], lora, "--to", "gguf", "-o", tmp_path / "t.gguf")
    assert res.code == 0, res.stdout + res.stderr
    _, arrays, _ = read_gguf(tmp_path / "t.gguf")
    assert "output.weight" not in arrays and "token_embd.weight" in arrays  # llama.cpp reuses it
    qlora = peft_adapter("qwen2", r=4, target_modules=["q_proj", "v_proj"])
    res = invoke("--json", "merge", tiny_models["qwen2"], qlora, "--to", "gguf", "-o", tmp_path / "q.gguf")
    assert res.code == 0, res.stdout + res.stderr
    meta, arrays, _ = read_gguf(tmp_path / "q.gguf")
    assert meta["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in arrays


def test_llama3_rope_factors_match_transformers():
    """rope_freqs.weight is inv_freq / inv_freq scaled by Llama 3's rule (transformers' own)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from adapterctl.io.formats.gguf_hparams import llama3_rope_factors

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope,
                      max_position_embeddings=131072)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    ours = llama3_rope_factors(cfg.to_dict())
    assert ours is not None and ours.shape == (32,) and ours.max() == 32.0 and ours.min() == 1.0
    np.testing.assert_allclose(ours, (plain / scaled).numpy(), rtol=1e-5)


# ----- refusals ------------------------------------------------------------------------------
def _copy_base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    shutil.copytree(BASE, base)
    return base


def test_refuses_an_architecture_merge_to_gguf_does_not_write(tiny_models, peft_adapter, tmp_path):
    lora = peft_adapter("gpt2", r=4, target_modules=["c_attn"])
    res = invoke("merge", tiny_models["gpt2"], lora, "--to", "gguf", "-o", tmp_path / "g.gguf")
    assert res.code == 5 and "architecture 'GPT2LMHeadModel': not one merge --to gguf writes" in res.stderr
    assert "convert_hf_to_gguf.py" in res.stderr and _nothing_left(tmp_path, "g.gguf")


@pytest.mark.parametrize("edit,words", [
    (lambda t: t["model"].update(byte_fallback=True), "byte-fallback BPE"),
    (lambda t: t.update(pre_tokenizer={"type": "Metaspace"}), "pre-tokenizer Metaspace"),
    (lambda t: t.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}}, {"type": "ByteLevel", "use_regex": False}]}),
     "regex '\\\\s+' is not one llama.cpp"),
    (lambda t: t["model"].update(type="Unigram"), "model type 'Unigram' is not BPE"),
])
def test_refuses_a_tokenizer_llama_cpp_cannot_take(tmp_path, edit, words):
    base = _copy_base(tmp_path)
    tok = json.loads((base / "tokenizer.json").read_text())
    edit(tok)
    (base / "tokenizer.json").write_text(json.dumps(tok))
    res = invoke("merge", base, UPPER, "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert res.code == 5 and "its tokenizer cannot be written to a GGUF model" in res.stderr, res.stderr
    assert words in res.stderr and _nothing_left(tmp_path, "m.gguf")


def test_refuses_a_missing_tokenizer_json(tmp_path):
    base = _copy_base(tmp_path)
    (base / "tokenizer.json").unlink()
    res = invoke("merge", base, UPPER, "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert res.code == 5 and "no tokenizer.json" in res.stderr and _nothing_left(tmp_path, "m.gguf")


def test_option_refusals(tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    res = invoke("--json", "merge", BASE, UPPER, "--to", "gguf", "--dry-run", "-o", out)
    assert res.code == 0 and res.json["dry_run"] and res.json["tensors"] == 39 and not out.exists()
    res = invoke("merge", BASE, UPPER, "--to", "gguf", "--outtype", "q3_x", "-o", out)
    assert res.code == 2 and "--outtype 'q3_x'" in res.stderr and "Q4_K_M" in res.stderr
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ADAPTERCTL_LLAMA_CPP", raising=False)
    res = invoke("merge", BASE, UPPER, "--to", "gguf", "--outtype", "Q4_K_M", "-o", out)
    assert res.code == 7 and "llama-quantize, which was not found" in res.stderr
    res = invoke("merge", BASE, UPPER, "--to", "gguf", "--outtype", "Q4_K_M", "--llama-cpp", tmp_path, "-o", out)
    assert res.code == 7 and "no llama-quantize in it" in res.stderr
    res = invoke("merge", BASE, UPPER, "--to", "gguf", "--dtype", "bfloat16", "-o", out)
    assert res.code == 2 and "--outtype" in res.stderr
    res = invoke("merge", BASE, UPPER, "-o", out)
    assert res.code == 2 and "Add --to gguf" in res.stderr
    assert _nothing_left(tmp_path, "m.gguf")
    out.write_bytes(b"keep")
    res = invoke("merge", BASE, UPPER, "--to", "gguf", "-o", out)
    assert res.code == 2 and "already exists" in res.stderr and out.read_bytes() == b"keep"


def test_chatml_base_gets_an_ollama_template(tmp_path):
    from adapterctl.core.merge.ollama import ollama_modelfile

    base = _copy_base(tmp_path)
    (base / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}")
    (base / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_p": 0.8}))
    text = ollama_modelfile(base, Path("/x/m.gguf"), ["a", "<|im_end|>"])
    assert text.startswith("FROM ./m.gguf\nTEMPLATE \"\"\"{{- range .Messages }}<|im_start|>")
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0.7" in text


@pytest.mark.parametrize("name", ["gptq_v2_asym_desc_act", "awq_gemm"])
def test_gptq_and_awq_bases_merge_into_a_gguf(name, quant_base, peft_adapter, tmp_path):
    """A GPTQ/AWQ base is dequantized tensor by tensor; the GGUF holds the same merge as the
    float32 safetensors one."""
    from safetensors.numpy import load_file

    qdir, _ = quant_base(name)
    lora = peft_adapter("llama", r=4, target_modules="all-linear")
    assert invoke("merge", qdir, lora, "--dtype", "float32", "-o", tmp_path / "st").code == 0
    res = invoke("--json", "merge", qdir, lora, "--to", "gguf", "--outtype", "f32", "-o", tmp_path / "m.gguf")
    assert res.code == 0 and res.json["tensors_merged"] == 14, res.stdout + res.stderr
    st = load_file(str(tmp_path / "st" / "model.safetensors"))
    _, arrays, _ = read_gguf(tmp_path / "m.gguf")
    assert np.array_equal(arrays["blk.1.ffn_down.weight"], st["model.layers.1.mlp.down_proj.weight"])
    assert np.array_equal(arrays["blk.0.attn_v.weight"], st["model.layers.0.self_attn.v_proj.weight"])


def test_check_and_convert_for_llama_cpp_name_the_merged_gguf(tiny_models, peft_adapter, tmp_path):
    """A trained norm (modules_to_save) is skipped by llama.cpp's LoRA loader: check says so and
    names merge --to gguf, convert --for llama.cpp refuses to drop it silently with the same
    answer, and the merged GGUF holds the trained norm."""
    from safetensors.numpy import load_file

    lora = peft_adapter("llama", r=4, target_modules=["q_proj"], modules_to_save=["input_layernorm"])
    res = invoke("--json", "check", lora, "--base", tiny_models["llama"], "--engine", "llama.cpp")
    assert "adapterctl merge BASE ADAPTER --to gguf" in res.stdout, res.stdout
    res = invoke("convert", lora, tmp_path / "c", "--for", "llama.cpp", "--base", tiny_models["llama"])
    assert res.code == 5 and "--to gguf -o merged.gguf" in res.stderr, res.stderr
    res = invoke("merge", tiny_models["llama"], lora, "--to", "gguf", "--outtype", "f32", "-o", tmp_path / "m.gguf")
    assert res.code == 0, res.stderr
    saved = load_file(str(lora / "adapter_model.safetensors"))
    key = next(k for k in saved if "layers.1.input_layernorm" in k)
    assert np.array_equal(read_gguf(tmp_path / "m.gguf")[1]["blk.1.attn_norm.weight"], saved[key])
