"""Session-wide fixtures: tiny random models saved with an offline tokenizer, and LoRA adapters
written by PEFT (the oracle, ``init_lora_weights=False``, perturbed so nothing is a no-op)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 384
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small language model learns to write short sentences",
    "low rank adapters change a few matrices of a large model",
    "merge the adapter into the base and save the result",
] * 20


def build_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer trained offline with `tokenizers`, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 4, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(str(path))


def _llama_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=0, eos_token_id=1, pad_token_id=2, **kw)


def model_configs() -> dict:
    from transformers import GPT2Config, Qwen2Config

    return {
        # grouped-query attention: q is 64x64, k and v are 32x64
        "llama": _llama_config(tie_word_embeddings=False),
        "llama_tied": _llama_config(tie_word_embeddings=True),
        # transformers Conv1D layers (weights stored (in, out))
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                           bos_token_id=0, eos_token_id=1),
        # biases on q/k/v
        "qwen2": Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, tie_word_embeddings=False,
                             bos_token_id=0, eos_token_id=1, pad_token_id=2),
    }


def build_model(config, path: Path, seed: int = 0, dtype=None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger random weights than the default init, so deltas matter
        for p in model.parameters():
            p.normal_(0, 0.05)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(path))
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of a saved tiny random model (float32), with a tokenizer."""
    root = tmp_path_factory.mktemp("models")
    return {name: build_model(cfg, root / name) for name, cfg in model_configs().items()}


def make_peft_adapter(base: Path, out: Path, seed: int = 0, perturb: float = 0.05,
                      **lora_kwargs) -> Path:
    """Save a PEFT LoRA adapter for ``base`` with non-trivial weights (the oracle's own files)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora_kwargs.setdefault("init_lora_weights", False)
    config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs)
    pm = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad:  # LoRA A/B, magnitudes, modules_to_save copies, token rows
                p.add_(torch.randn_like(p) * perturb)
    pm.save_pretrained(str(out))
    # PEFT keeps these as sets and saves them in hash order, which changes from run to run; the
    # caller's order makes the files (and the transcripts that show them) the same every run
    cfg_path = out / "adapter_config.json"
    saved = json.loads(cfg_path.read_text())
    for key in ("target_modules", "target_parameters"):
        given = lora_kwargs.get(key)
        if isinstance(given, list) and isinstance(saved.get(key), list) and sorted(given) == sorted(saved[key]):
            saved[key] = list(given)
    cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    return out


@pytest.fixture(scope="session")
def peft_adapter(tmp_path_factory, tiny_models):
    """Factory: ``peft_adapter("llama", r=4, target_modules=[...])`` -> cached adapter folder."""
    root = tmp_path_factory.mktemp("adapters")

    def make(base: str, seed: int = 0, **lora_kwargs) -> Path:
        key = hashlib.sha1(json.dumps([base, seed, lora_kwargs], sort_keys=True, default=str)
                           .encode()).hexdigest()[:12]
        out = root / f"{base}-{key}"
        if not out.exists():
            make_peft_adapter(tiny_models[base], out, seed=seed, **lora_kwargs)
        return out

    return make


#: the quantized bases (FP8, MXFP4, compressed-tensors) of the merge, attach and reader tests;
#: under -n N, the tests marked xdist_group on one worker (a docs page's transcripts, the benchmarks)
pytest_plugins = ("tests.quant_fixtures", "tests.xdist_groups")

@pytest.fixture(scope="session")
def vlm_models(tmp_path_factory):
    """Tiny Llava / Qwen2.5-VL / Gemma-3 models, their text-only extractions and PEFT adapters
    on them, built on first use (tests/vlm_fixtures.py)."""
    from tests.vlm_fixtures import VlmModels

    return VlmModels(tmp_path_factory.mktemp("vlm"))
