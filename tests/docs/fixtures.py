"""Tiny random models and PEFT adapters that some transcripts use besides the bundled example.

A block names them in its fence (```console setup=moe); the page's working folder gets them once,
before the block runs: ``python -m tests.docs.fixtures NAME`` in that folder. They are built as the
tests build theirs (tests/conftest.py, tests/moe_fixtures.py, tests/vlm_fixtures.py,
tests/quant_fixtures.py: seeded, PEFT writes the adapters), so a transcript shows what the tests
measure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def moe(root: Path) -> None:
    """tiny-mixtral and moe-lora: LoRA on its fused experts (target_parameters, r=2)."""
    from tests.conftest import build_model, make_peft_adapter
    from tests.moe_fixtures import EXPERT_PARAMS, moe_config

    base = build_model(moe_config("mixtral"), root / "tiny-mixtral")
    make_peft_adapter(base, root / "moe-lora", seed=0, perturb=0.3, r=2, lora_alpha=4,
                      target_modules=[], target_parameters=EXPERT_PARAMS)


def tied(root: Path) -> None:
    """tied-base (a Llama with tied embeddings) and head-lora: LoRA on q_proj and lm_head."""
    from tests.conftest import _llama_config, build_model, make_peft_adapter

    base = build_model(_llama_config(tie_word_embeddings=True), root / "tied-base")
    make_peft_adapter(base, root / "head-lora", r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])


def fp8(root: Path) -> None:
    """llama-fp8 (block-quantized FP8 of a tiny Llama), an adapter for it, and broken-fp8 (one
    scale missing)."""
    from safetensors.torch import load_file, save_file

    from tests.conftest import _llama_config, build_model, make_peft_adapter
    from tests.quant_fixtures import build_fp8

    work = root / ".fp8-build"
    src = build_model(_llama_config(tie_word_embeddings=False), work / "llama")
    make_peft_adapter(src, root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    quantized, _ = build_fp8(src, work)
    shutil.copytree(quantized, root / "llama-fp8")
    shutil.copytree(quantized, root / "broken-fp8")
    weights = root / "broken-fp8/model.safetensors"
    state = load_file(str(weights))
    del state["model.layers.0.self_attn.q_proj.weight_scale_inv"]
    save_file(state, str(weights), metadata={"format": "pt"})
    config = json.loads((root / "adapter/adapter_config.json").read_text())
    config["base_model_name_or_path"] = "llama"  # as trained: the float model, by its folder name
    (root / "adapter/adapter_config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(work)


def vlm(root: Path) -> None:
    """llava-tiny (a Llava), llava-tiny-text (its language model alone), and adapters: llava-lora
    (the language model's q/v/o/down_proj), llava-lora-vision (the vision tower's q/v_proj, layer
    0), text-lora (the text model's q/v_proj) and gpt2-lora (a GPT-2's c_attn)."""
    from tests.conftest import build_model, make_peft_adapter, model_configs
    from tests.vlm_fixtures import build_vlm_pair, make_adapter

    vlm_dir, text_dir = build_vlm_pair("llava", root / ".vlm-build")
    vlm_dir.rename(root / "llava-tiny")
    text_dir.rename(root / "llava-tiny-text")
    shutil.rmtree(root / ".vlm-build")
    make_adapter(root / "llava-tiny", root / "llava-lora", r=4, lora_alpha=8,
                 target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj|down_proj)")
    make_adapter(root / "llava-tiny", root / "llava-lora-vision", r=4, lora_alpha=8,
                 target_modules=r".*vision_tower.*layers\.0\.self_attn\.(q_proj|v_proj)")
    make_adapter(root / "llava-tiny-text", root / "text-lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    gpt2 = build_model(model_configs()["gpt2"], root / ".gpt2")
    make_peft_adapter(gpt2, root / "gpt2-lora", r=4, lora_alpha=8, target_modules=["c_attn"])
    for name in ("llava-lora", "llava-lora-vision", "text-lora", "gpt2-lora"):
        config_path = root / name / "adapter_config.json"
        config = json.loads(config_path.read_text())  # the folder names a reader sees, not paths of this run
        config["base_model_name_or_path"] = Path(config["base_model_name_or_path"]).name.replace(".gpt2", "gpt2")
        config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(root / ".gpt2")


def tiny_base_gguf(root: Path) -> None:
    """tiny-base.gguf: llama.cpp's own convert_hf_to_gguf.py of examples/tiny-base (f32), run as
    the GGUF interop tests run it (told that the example's byte-level BPE tokenizer is GPT-2's)."""
    from tests.interop.gguf_harness import run_converters

    job = ("convert_hf_to_gguf.py", [root / "examples/tiny-base", "--outfile", root / "tiny-base.gguf", "--outtype", "f32"])
    (error,) = run_converters([job], root / ".gguf-build")
    if error:
        raise RuntimeError(error)
    shutil.rmtree(root / ".gguf-build")


def qlora(root: Path) -> None:
    """tiny-base (examples/tiny-base) and qlora-upper: benchmarks/qlora.py's QLoRA adapter,
    trained on tiny-base quantized to NF4 by bitsandbytes, with a card as axolotl writes it."""
    from transformers import AutoTokenizer

    from tests.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import qlora as bench  # benchmarks/qlora.py

    shutil.copytree(REPO / "examples/tiny-base", root / "tiny-base")
    tok = AutoTokenizer.from_pretrained(str(root / "tiny-base"))
    bench.train(bench.nf4_base(), tok, root / "qlora-upper")
    config_path = root / "qlora-upper/adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "tiny-base"  # as trained: the base by its folder's name
    config_path.write_text(json.dumps(config, indent=2))
    (root / "qlora-upper/README.md").write_text(
        "# qlora-upper\n\nTrained with axolotl.\n\n```yaml\nbase_model: tiny-base\nadapter: qlora\n"
        "load_in_4bit: true\nlora_r: 8\nlora_alpha: 16\n```\n"
    )


FIXTURES = {"moe": moe, "tied": tied, "fp8": fp8, "vlm": vlm, "tiny-base-gguf": tiny_base_gguf, "qlora": qlora}

if __name__ == "__main__":
    for name in sys.argv[1:]:
        FIXTURES[name](Path.cwd())
