"""merge --to gguf, proven by llama.cpp itself: llama-completion --temp 0 runs the merged GGUFs of
the bundled example's adapters (examples/upper-lora: LoRA; examples/dragon-dora: DoRA + rsLoRA)
and must write PEFT's greedy text (the adapter attached to the float32 base, transformers'
generate) byte for byte; q8_0 files and a llama-quantize Q4_K_M file run, and the q8_0 ones give
mostly the same tokens. Our GGUF is also compared with what llama.cpp's own convert_hf_to_gguf.py
makes of our safetensors merge: the same tensors, bit for bit, and the same metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, invoke
from tests.interop.gguf_harness import SPARE_TOKENS, complete, llama_cpp_dir, run_converters, token_bytes

BASE = REPO / "examples/tiny-base"
ADAPTERS = {"upper": REPO / "examples/upper-lora", "dragon": REPO / "examples/dragon-dora"}
PROMPTS = ["the little fox", "at night,", "merge the adapter"]
N = 20
#: metadata llama.cpp's converter takes from the folder's name and model card, not from the model
NAMING = {"general.name", "general.tags", "general.basename", "general.finetune"}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """Per adapter: our GGUFs (f32, q8_0), our float32 safetensors merge, and llama.cpp's
    conversion of that merge (f32, q8_0), in one converter process."""
    root = tmp_path_factory.mktemp("merged-gguf")
    jobs = []
    for name, lora in ADAPTERS.items():
        for outtype in ("f32", "q8_0"):
            res = invoke("merge", BASE, lora, "--to", "gguf", "--outtype", outtype,
                         "-o", root / f"{name}-{outtype}.gguf")
            assert res.code == 0, res.stdout + res.stderr
            jobs.append(("convert_hf_to_gguf.py", [root / f"{name}-st", "--outfile",
                                                   root / f"{name}-ref-{outtype}.gguf", "--outtype", outtype]))
        res = invoke("merge", BASE, lora, "--dtype", "float32", "-o", root / f"{name}-st")
        assert res.code == 0, res.stdout + res.stderr
    errors = run_converters(jobs, root / "work")
    assert not any(errors), next(e for e in errors if e)
    return root


def peft_greedy(lora: Path, prompt: str, n: int) -> list[int]:
    """PEFT's greedy completion ids: the adapter attached to the float32 base (the oracle)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE))
    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(lora)).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return _until_eos(out[0, ids.shape[1]:].tolist(), tok.eos_token_id)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    """Both stop at the end-of-text token (llama-completion prints " [end of text]" there)."""
    return ids[: ids.index(eos)] if eos in ids else ids


def llama_text(gguf: Path, prompt: str, n: int) -> bytes:
    """llama.cpp's greedy completion of ``n`` + SPARE_TOKENS tokens (compared as a prefix: llama-completion
    holds back bytes of an unfinished UTF-8 character); the prompt tokenized as transformers does."""
    from transformers import AutoTokenizer

    prompt_ids, out = complete(gguf, prompt, n + SPARE_TOKENS)
    assert prompt_ids == AutoTokenizer.from_pretrained(str(BASE))(prompt).input_ids, gguf
    return out[:-2] if out.endswith(b"\n\n") else out


def matching_tokens(ids: list[int], text: bytes) -> int:
    """How many of PEFT's tokens ``text`` reproduces before it first differs."""
    n = 0
    while n < len(ids) and text.startswith(token_bytes(BASE, ids[: n + 1])):
        n += 1
    return n


@pytest.mark.parametrize("name", ADAPTERS)
def test_merged_f32_gguf_writes_peft_greedy_text(merged, name):
    changed = False
    for prompt in PROMPTS:
        ids = peft_greedy(ADAPTERS[name], prompt, N)
        ours = token_bytes(BASE, ids)
        got = llama_text(merged / f"{name}-f32.gguf", prompt, N)
        assert got.startswith(ours), (name, prompt, got, ours)
        changed |= ours != token_bytes(BASE, peft_greedy_base(prompt))
    assert changed, "the adapter changed no completion: the comparison proves nothing"


def peft_greedy_base(prompt: str) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE))
    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.pad_token_id)
    return _until_eos(out[0, ids.shape[1]:].tolist(), tok.eos_token_id)


def test_merged_q8_0_gguf_runs_with_mostly_the_same_tokens(merged):
    same, total = 0, 0
    for name, lora in ADAPTERS.items():
        for prompt in PROMPTS:
            ids = peft_greedy(lora, prompt, N)
            same += matching_tokens(ids, llama_text(merged / f"{name}-q8_0.gguf", prompt, N))
            total += len(ids)
    print(f"q8_0: {same} of {total} greedy tokens as PEFT's")  # the figure for the report (-s)
    assert same >= total // 2, f"q8_0: {same} of {total} greedy tokens as PEFT's"


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_same_file_as_llama_cpp_converter_on_our_safetensors_merge(merged, name, outtype):
    import gguf

    ours = gguf.GGUFReader(str(merged / f"{name}-{outtype}.gguf"))
    ref = gguf.GGUFReader(str(merged / f"{name}-ref-{outtype}.gguf"))
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name

    def meta(r):
        return {k: f.contents() for k, f in r.fields.items()
                if not k.startswith("GGUF.") and k not in NAMING}

    assert meta(ours) == meta(ref)


def test_llama_quantize_types_run(tmp_path):
    exe = llama_cpp_dir() / "build/bin/llama-quantize"
    assert exe.is_file(), f"{exe} missing: run `bash .ci/engines/llama_cpp.sh` (it builds llama-quantize)"
    out = tmp_path / "upper-q4km.gguf"
    res = invoke("--json", "merge", BASE, ADAPTERS["upper"], "--to", "gguf", "--outtype", "Q4_K_M",
                 "--llama-cpp", llama_cpp_dir(), "-o", out)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json["quantized_by"] == str(exe) and res.json["outtype"] == "Q4_K_M"
    import gguf

    r = gguf.GGUFReader(str(out))
    assert int(r.fields["general.file_type"].contents()) == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert [p for p in tmp_path.iterdir()] == [out]  # the F16 intermediate is gone
    llama_text(out, PROMPTS[0], 8)  # loads and runs


# ----- the other architectures merge --to gguf writes -------------------------------------------
ARCHS = ["mistral", "qwen2", "qwen3", "llama_tied"]


@pytest.fixture(scope="module")
def arch_world(tmp_path_factory):
    """Tiny models of each architecture (tests/interop/test_llama_cpp_gguf.py's configs; a tied
    Llama too), an all-linear LoRA each, our f32 GGUF merge and llama.cpp's conversion of our
    float32 safetensors merge."""
    from tests.conftest import build_model, make_peft_adapter
    from tests.interop.test_llama_cpp_gguf import LINEAR, _configs

    root = tmp_path_factory.mktemp("merged-archs")
    configs = _configs()
    configs["llama_tied"] = configs["llama"].__class__(**{**configs["llama"].to_dict(), "tie_word_embeddings": True})
    models, jobs = {}, []
    for arch in ARCHS:
        models[arch] = build_model(configs[arch], root / arch)
        lora = make_peft_adapter(models[arch], root / f"{arch}-lora", r=4, lora_alpha=8,
                                 target_modules=LINEAR, perturb=0.3)
        res = invoke("merge", models[arch], lora, "--to", "gguf", "--outtype", "f32", "-o", root / f"{arch}.gguf")
        assert res.code == 0, res.stdout + res.stderr
        res = invoke("merge", models[arch], lora, "--dtype", "float32", "-o", root / f"{arch}-st")
        assert res.code == 0, res.stdout + res.stderr
        jobs.append(("convert_hf_to_gguf.py", [root / f"{arch}-st", "--outfile", root / f"{arch}-ref.gguf",
                                               "--outtype", "f32"]))
    errors = run_converters(jobs, root / "work")
    assert not any(errors), next(e for e in errors if e)
    return root, models


@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_equal_llama_cpp_converter(arch_world, arch):
    import gguf

    root, _ = arch_world
    ours = gguf.GGUFReader(str(root / f"{arch}.gguf"))
    ref = gguf.GGUFReader(str(root / f"{arch}-ref.gguf"))
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name

    def meta(r):
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.") and k not in NAMING}

    mine, theirs = meta(ours), meta(ref)
    last = len(theirs["tokenizer.ggml.tokens"]) - 1
    if arch == "qwen2" and theirs["tokenizer.ggml.tokens"][last] == "<|endoftext|>":
        # the one difference: transformers' Qwen2Tokenizer class (qwen2's) adds <|endoftext|> on
        # load when tokenizer.json lacks it (this test tokenizer does; Qwen's own tokenizer.json
        # has it), and llama.cpp's converter reads the vocabulary through transformers; ours
        # reads the file, so that id stays a padding token
        assert mine["tokenizer.ggml.tokens"][last] == f"[PAD{last}]"
        for m in (mine, theirs):
            m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"] = (
                m["tokenizer.ggml.tokens"][:last], m["tokenizer.ggml.token_type"][:last])
    assert mine == theirs
    if arch == "llama_tied":
        assert "output.weight" not in [t.name for t in ours.tensors]
