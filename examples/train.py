"""Train the bundled example from scratch, offline and seeded: a tiny Llama-architecture base
model with its own byte-level BPE tokenizer, then LoRA adapters trained with adapterctl's own
engine (``trainable=True``).

    python examples/train.py            # everything (a few minutes on 2 CPU cores)
    python examples/train.py base       # only the base model
    python examples/train.py adapters   # only the adapters (needs the base)
    python examples/train.py adapters upper-lora   # one adapter

Everything it writes is described by CONFIG below; tests/test_examples.py checks the committed
files against it, and MANIFEST.json records the sha256 of every file written.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # the repo's adapterctl, unless an installed one comes first

from corpus import ANIMALS, PLACES, corpus, sentence  # noqa: E402

CONFIG = {
    "seed": 1234,
    "tokenizer": {"vocab_size": 1024},
    "base": {
        "dir": "tiny-base",
        "model": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
                  "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256,
                  "tie_word_embeddings": False},
        "stories": 6000, "shout_rate": 0.05,
        "steps": 900, "batch_size": 24, "seq_len": 64, "lr": 3e-3,
    },
    # Adapters, trained with adapterctl's engine on the base (all LoRA maths is ours).
    "adapters": {
        # answers in UPPER CASE: a style the base only shows after "shouted:"
        "upper-lora": {"style": "upper", "r": 8, "lora_alpha": 16,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"],
                       "steps": 300, "lr": 3e-3},
        # every story is about dragons; DoRA (weight-decomposed LoRA), rsLoRA scaling
        "dragon-dora": {"style": "dragon", "r": 8, "lora_alpha": 8, "use_dora": True,
                        "use_rslora": True, "target_modules": ["q_proj", "v_proj", "up_proj",
                                                               "down_proj"],
                        "steps": 300, "lr": 3e-3},
        # PiSSA-initialised (the base is replaced by its residual during training): writes the
        # initial adapter to pissa-init/ and the trained one to pissa-trained/ for
        # `adapterctl convert --pissa-init`
        "pissa-trained": {"style": "sea", "r": 8, "lora_alpha": 8, "init_lora_weights": "pissa",
                          "target_modules": ["q_proj", "v_proj", "o_proj"], "init_dir": "pissa-init",
                          "steps": 200, "lr": 1e-3},
    },
    "adapter_batch_size": 24, "adapter_seq_len": 64,
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_texts() -> list[str]:
    """Stories; a few contain a shouted sentence in upper case, so upper-case tokens are known to
    the base but used only after 'shouted:'."""
    cfg = CONFIG["base"]
    rng = random.Random(CONFIG["seed"] + 1)
    texts = corpus(CONFIG["seed"], cfg["stories"])
    for i, t in enumerate(texts):
        if rng.random() < cfg["shout_rate"]:
            a = rng.choice(["fox", "cat", "dog", "owl", "bear"])
            texts[i] = f"{t} the {a} shouted: {sentence(rng).upper()}"
    return texts


def train_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["tokenizer"]["vocab_size"],
                                  special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # Upper-case copies teach the tokenizer whole upper-case words (not the model: the base
    # is trained on base_texts only).
    tok.train_from_iterator(texts + [t.upper() for t in texts[:1500]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def token_stream(tokenizer, texts: list[str]):
    import torch

    ids: list[int] = []
    for t in texts:
        ids += [tokenizer.bos_token_id, *tokenizer(t)["input_ids"], tokenizer.eos_token_id]
    return torch.tensor(ids)


def batches(stream, steps: int, batch_size: int, seq_len: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=g)
        yield torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def train_loop(model, params, stream, cfg: dict, seed: int, what: str) -> float:
    import torch

    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    steps = cfg["steps"]
    model.train()
    loss = float("nan")
    for step, x in enumerate(batches(stream, steps, cfg["batch_size"], cfg["seq_len"], seed)):
        lr = cfg["lr"] * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"{what}: step {step + 1}/{steps} loss {loss:.3f}")
    model.eval()
    return loss


def train_base() -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(CONFIG["seed"])
    torch.use_deterministic_algorithms(True)
    cfg = CONFIG["base"]
    out = HERE / cfg["dir"]
    out.mkdir(exist_ok=True)
    texts = base_texts()
    tok = train_tokenizer(texts, out)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                         **cfg["model"]))
    log(f"base: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    stream = token_stream(tok, texts)
    train_loop(model, list(model.parameters()), stream, cfg, CONFIG["seed"], "base")
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out))
    log(f"base saved to {out}")


def styled_texts(style: str, count: int, seed: int) -> list[str]:
    """Training text for an adapter: stories rewritten into the adapter's style."""
    import re

    rng = random.Random(seed)
    texts = corpus(seed, count)
    out = []
    for t in texts:
        if style == "upper":  # a lower-case opening, then upper case: the adapter's answer style
            words = t.split(" ")
            k = rng.randint(1, 4)
            out.append(" ".join(words[:k]) + " " + " ".join(words[k:]).upper())
        elif style == "dragon":
            out.append(re.sub(r"\b(" + "|".join(ANIMALS) + r")\b", "dragon", t))
        elif style == "sea":
            out.append(re.sub(r"\b(" + "|".join(PLACES) + r")\b", "sea", t))
        else:
            raise ValueError(style)
    return out


def fresh_adapter(model, name: str, spec: dict, out: Path):
    """A new LoRA adapter as PEFT would initialise it (A Kaiming-uniform, B = 0; DoRA's
    magnitude = the base row norms; PiSSA: A0/B0 from the SVD of the base weights)."""
    import torch

    from adapterctl.core.adapter.compat import LayerKind
    from adapterctl.core.adapter.config import parse_adapter_config
    from adapterctl.core.adapter.targeting import lora_scaling, select_targets
    from adapterctl.core.lora.delta import mutated_init
    from adapterctl.core.lora.loaded import LoadedAdapter, LoraWeights
    from adapterctl.io.folders.adapter_dir import AdapterFiles

    doc = adapter_config_doc(spec)
    cfg = parse_adapter_config(doc, name)
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    paths = select_targets(cfg, [n for n, _ in model.named_modules()], linear, "lm_head", "llama")
    modules = {}
    g = torch.Generator().manual_seed(CONFIG["seed"])
    for path in paths:
        W = model.get_submodule(path).weight.detach()
        r, alpha = cfg.r, cfg.lora_alpha
        s = lora_scaling(alpha, r, cfg.use_rslora)
        if cfg.init_kind == "pissa":
            A, B, _ = mutated_init(W, r, s, "pissa")
        else:
            A = torch.empty(r, W.shape[1])
            bound = 1 / math.sqrt(W.shape[1])  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and PEFT
            A.uniform_(-bound, bound, generator=g)
            B = torch.zeros(W.shape[0], r)
        mag = W.float().norm(dim=1) if cfg.use_dora else None
        modules[path] = LoraWeights(path, LayerKind.LINEAR, A, B, r, alpha, s, magnitude=mag)
    files = AdapterFiles(out, out / "adapter_config.json", None, None, name)
    return LoadedAdapter(name, cfg, files, modules), doc


def adapter_config_doc(spec: dict) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "examples/tiny-base",
        "r": spec["r"], "lora_alpha": spec["lora_alpha"], "target_modules": spec["target_modules"],
        "use_dora": spec.get("use_dora", False), "use_rslora": spec.get("use_rslora", False),
        "init_lora_weights": spec.get("init_lora_weights", True), "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "rank_pattern": {},
        "alpha_pattern": {}, "inference_mode": True, "revision": None,
    }


def save_adapter(tensors: dict, doc: dict, out: Path) -> None:
    """PEFT's on-disk format: base_model.model.<path>.lora_A.weight ..., sorted JSON config."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())},
              str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def lora_tensors(la) -> dict:
    out = {}
    for path, w in la.modules.items():
        p = f"base_model.model.{path}"
        out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = w.A, w.B
        if w.magnitude is not None:
            out[f"{p}.lora_magnitude_vector"] = w.magnitude
    return out


def trained_tensors(model, name: str) -> dict:
    from adapterctl.core.runtime.layers import LoraWrapper

    out = {}
    for mod in model.modules():
        if isinstance(mod, LoraWrapper) and name in mod.lora:
            slot = mod.lora[name]
            p = f"base_model.model.{slot.path}"
            out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = slot.A, slot.B
            if slot.magnitude is not None:
                out[f"{p}.lora_magnitude_vector"] = slot.magnitude
    return out


def train_adapter(name: str, spec: dict) -> None:
    import torch

    from adapterctl.core.runtime.attach import attach_adapter, detach
    from adapterctl.core.runtime.model import Placement, load_base

    torch.manual_seed(CONFIG["seed"])
    base = load_base(HERE / CONFIG["base"]["dir"], Placement(dtype="float32"))
    model, tok = base.model, base.tokenizer
    out = HERE / name
    la, doc = fresh_adapter(model, name, spec, out)
    if spec.get("init_dir"):  # PEFT's workflow: the initial adapter, with init_lora_weights=True
        save_adapter(lora_tensors(la), {**doc, "init_lora_weights": True}, HERE / spec["init_dir"])
    attach_adapter(model, la, name=name, trainable=True)
    texts = styled_texts(spec["style"], 3000, CONFIG["seed"] + hash_name(name))
    stream = token_stream(tok, texts)
    cfg = {"steps": spec["steps"], "lr": spec["lr"], "batch_size": CONFIG["adapter_batch_size"],
           "seq_len": CONFIG["adapter_seq_len"]}
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"{name}: {sum(p.numel() for p in params):,} trainable parameters")
    train_loop(model, params, stream, cfg, CONFIG["seed"], name)
    save_adapter(trained_tensors(model, name), doc, out)
    detach(model, name)
    log(f"{name} saved to {out}")


def hash_name(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def write_manifest() -> None:
    files = {}
    for d in sorted(HERE.iterdir()):
        if d.is_dir() and not d.name.startswith(("_", ".")):
            for f in sorted(d.rglob("*")):
                if f.is_file():
                    files[str(f.relative_to(HERE))] = hashlib.sha256(f.read_bytes()).hexdigest()
    (HERE / "MANIFEST.json").write_text(json.dumps({"config": CONFIG, "files": files}, indent=2) + "\n")


def main(argv: list[str]) -> None:
    stage = argv[0] if argv else "all"
    if stage in ("all", "base"):
        train_base()
    if stage in ("all", "adapters"):
        names = argv[1:] or list(CONFIG["adapters"])  # `adapters NAME...` retrains only those
        for name in names:
            train_adapter(name, CONFIG["adapters"][name])
    write_manifest()


if __name__ == "__main__":
    main(sys.argv[1:])
