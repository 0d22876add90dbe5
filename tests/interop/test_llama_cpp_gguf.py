"""convert --to gguf, proven by llama.cpp itself: its own convert_hf_to_gguf.py makes the base
GGUF, llama-completion --temp 0 runs it with our adapter file, and the completion must equal
``adapterctl generate`` with the PEFT adapter byte for byte (prompt tokens checked equal too).
Our tensors are also compared with what llama.cpp's own convert_lora_to_gguf.py writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_model, make_peft_adapter
from tests.helpers import REPO, invoke
from tests.interop.gguf_harness import SPARE_TOKENS, complete, run_converters, token_bytes

#: covers the test tokenizer (372 tokens) and Qwen2Tokenizer's extra <|endoftext|>
VOCAB = 373
PROMPTS = ["the quick brown fox", "merge the adapter"]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: architectures whose *base* llama.cpp reproduces greedily on these tiny random models; Gemma-2
#: and Gemma-3 bases already differ from transformers there, so for them only the tensors are
#: compared with llama.cpp's own converter
GENERATE_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2"]
TENSOR_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]


def _configs() -> dict:
    import transformers as T

    c = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return {
        "llama": T.LlamaConfig(tie_word_embeddings=False, **c),
        "mistral": T.MistralConfig(tie_word_embeddings=False, **c),
        "qwen2": T.Qwen2Config(tie_word_embeddings=False, **c),
        "qwen3": T.Qwen3Config(tie_word_embeddings=False, head_dim=16, **c),
        "gemma": T.GemmaConfig(head_dim=16, **c),
        "gemma2": T.Gemma2Config(head_dim=16, **c),
        "gemma3": T.Gemma3TextConfig(head_dim=16, **c),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                             n_ctx=128, bos_token_id=0, eos_token_id=1),
    }


def _targets(arch: str) -> list[str]:
    return ["c_attn", "c_proj", "c_fc"] if arch == "gpt2" else LINEAR


@pytest.fixture(scope="session")
def gguf_world(tmp_path_factory):
    """Tiny models of each architecture, PEFT adapters for them, and every base converted by
    llama.cpp (plus llama.cpp's own conversion of each adapter), in one converter process."""
    root = tmp_path_factory.mktemp("gguf")
    models, adapters, jobs = {}, {}, []
    for arch, cfg in _configs().items():
        models[arch] = build_model(cfg, root / arch)
        adapters[arch] = make_peft_adapter(models[arch], root / f"{arch}-lora", r=4, lora_alpha=8,
                                           target_modules=_targets(arch), perturb=0.3)
        jobs.append(("convert_hf_to_gguf.py", [models[arch], "--outfile", root / f"{arch}.gguf",
                                               "--outtype", "f32"]))
    # rsLoRA with rank and alpha patterns: scales llama.cpp cannot express, folded into lora_b
    adapters["llama-rs"] = make_peft_adapter(
        models["llama"], root / "llama-rs", r=4, lora_alpha=8, target_modules=LINEAR,
        use_rslora=True, rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6},
        alpha_pattern={"o_proj": 3}, perturb=0.3, seed=1)
    example = REPO / "examples"
    jobs.append(("convert_hf_to_gguf.py", [example / "tiny-base", "--outfile",
                                           root / "tiny-base.gguf", "--outtype", "f32"]))
    refs = [a for a in TENSOR_ARCHS + ["gpt2"]]
    for arch in refs:
        jobs.append(("convert_lora_to_gguf.py", [adapters[arch], "--base", models[arch],
                                                 "--outfile", root / f"{arch}-ref.gguf"]))
    errors = run_converters(jobs, root / "work")
    base_errors = [e for (s, _), e in zip(jobs, errors) if s == "convert_hf_to_gguf.py" and e]
    assert not base_errors, base_errors[0]
    ref_errors = dict(zip(refs, errors[-len(refs):]))
    return root, models, adapters, ref_errors


def _ours(root: Path, arch: str, adapter: Path, model: Path, outtype: str = "f32") -> Path:
    out = root / f"{adapter.name}-{outtype}.gguf"
    if not out.exists():
        res = invoke("convert", adapter, out, "--to", "gguf", "--base", model, "--outtype", outtype)
        assert res.code == 0, res.stdout + res.stderr
    return out


def _generate_bytes(model: Path, adapter: Path | None, prompt: str, n: int) -> tuple[bytes, list]:
    args = ["--json", "-q", "generate", model, "--prompt", prompt, "--max-new-tokens", str(n)]
    res = invoke(*args, *(["--adapter", adapter] if adapter else []))
    assert res.code == 0, res.stdout
    ids = res.json["completions"][0]["completion_token_ids"]
    return token_bytes(model, ids), ids


def _llama_bytes(base_gguf: Path, prompt: str, n: int, lora: Path | None, model: Path) -> bytes:
    """llama.cpp's completion of ``n`` + SPARE_TOKENS tokens: llama-completion holds back the bytes of a
    token that could start an unfinished UTF-8 character, so our ``n`` tokens are compared as a
    prefix of a longer completion."""
    from transformers import AutoTokenizer

    prompt_ids, out = complete(base_gguf, prompt, n + SPARE_TOKENS, lora)
    assert prompt_ids == AutoTokenizer.from_pretrained(str(model))(prompt).input_ids, (base_gguf, lora)
    return out[:-2] if out.endswith(b"\n\n") else out  # llama-completion ends with a blank line


def test_example_upper_lora_in_llama_cpp(gguf_world, tmp_path):
    root = gguf_world[0]
    base, lora = REPO / "examples/tiny-base", REPO / "examples/upper-lora"
    res = invoke("convert", lora, tmp_path / "upper.gguf", "--to", "gguf")  # base from the config
    assert res.code == 0, res.stdout + res.stderr
    assert "llama-server -m BASE.gguf --lora" in res.stdout  # Ollama no longer takes an ADAPTER GGUF
    for prompt in ("the little fox", "at night,"):
        ours, _ = _generate_bytes(base, lora, prompt, 20)
        got = _llama_bytes(root / "tiny-base.gguf", prompt, 20, tmp_path / "upper.gguf", base)
        assert got.startswith(ours) and ours.upper() == ours  # upper-lora's style


@pytest.mark.parametrize("arch", GENERATE_ARCHS)
def test_greedy_tokens_equal_per_architecture(gguf_world, arch):
    root, models, adapters, _ = gguf_world
    lora = _ours(root, arch, adapters[arch], models[arch])
    changed = False
    for prompt in PROMPTS:
        ours, ids = _generate_bytes(models[arch], adapters[arch], prompt, 16)
        got = _llama_bytes(root / f"{arch}.gguf", prompt, 16, lora, models[arch])
        assert got.startswith(ours), (arch, prompt, ids, got, ours)
        changed |= got != _llama_bytes(root / f"{arch}.gguf", prompt, 16, None, models[arch])
    assert changed, "the adapter changed no completion: the comparison proves nothing"


def test_rslora_and_patterns_are_folded_exactly(gguf_world):
    root, models, adapters, _ = gguf_world
    res = invoke("--json", "convert", adapters["llama-rs"], root / "rs.gguf", "--to", "gguf",
                 "--base", models["llama"])
    assert res.code == 0 and res.json["folded_scaling"], res.stdout
    for prompt in PROMPTS:
        ours, _ = _generate_bytes(models["llama"], adapters["llama-rs"], prompt, 16)
        assert _llama_bytes(root / "llama.gguf", prompt, 16, root / "rs.gguf",
                            models["llama"]).startswith(ours)


@pytest.mark.parametrize("arch", TENSOR_ARCHS)
def test_tensors_equal_llama_cpp_converter(gguf_world, arch):
    from adapterctl.io.formats.gguf_adapter import read_gguf_adapter

    root, models, adapters, ref_errors = gguf_world
    assert ref_errors[arch] is None, ref_errors[arch]
    ours = read_gguf_adapter(_ours(root, arch, adapters[arch], models[arch]))
    ref = read_gguf_adapter(root / f"{arch}-ref.gguf")
    assert (ours.arch, ours.alpha) == (ref.arch, ref.alpha)
    assert sorted(ours.tensors) == sorted(ref.tensors)
    for name, t in ref.tensors.items():
        assert np.array_equal(ours.tensors[name], t), name


def test_gpt2_llama_cpp_converter_transposes_conv1d_lora(gguf_world):
    """llama.cpp's convert_lora_to_gguf.py transposes GPT-2 Conv1D *LoRA* factors as it does the
    Conv1D base weights, but PEFT's factors are already (out, in)-oriented: c_attn fails its
    shape check and square c_proj would be applied transposed. Ours match llama.cpp's generation
    (test above); here the converter's output is checked to be what that analysis says."""
    from adapterctl.io.formats.gguf_adapter import read_gguf_adapter

    root, models, adapters, ref_errors = gguf_world
    ours = read_gguf_adapter(_ours(root, "gpt2", adapters["gpt2"], models["gpt2"]))
    if ref_errors["gpt2"] is not None:
        return  # the converter refused the adapter outright (a crash, not a wrong file)
    ref = read_gguf_adapter(root / "gpt2-ref.gguf")
    name = "blk.0.attn_output.weight"
    assert np.array_equal(ref.tensors[name + ".lora_a"], ours.tensors[name + ".lora_b"].T)


@pytest.mark.parametrize("outtype,tol", [("f16", 2e-3), ("bf16", 1e-2), ("q8_0", 2e-2)])
def test_outtypes_run_in_llama_cpp_and_round_trip(gguf_world, tmp_path, outtype, tol):
    root, models, adapters, _ = gguf_world
    lora = _ours(root, "llama", adapters["llama"], models["llama"], outtype)
    _llama_bytes(root / "llama.gguf", PROMPTS[0], 4, lora, models["llama"])  # loads and runs
    back = tmp_path / "back"
    res = invoke("convert", "--from", "gguf", "--base", models["llama"], lora, back)
    assert res.code == 0, res.stdout + res.stderr
    from safetensors.torch import load_file

    a = load_file(str(adapters["llama"] / "adapter_model.safetensors"))
    b = load_file(str(back / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        err = float((a[k] - b[k]).abs().max() / a[k].abs().max())
        assert err <= tol, (k, err)
