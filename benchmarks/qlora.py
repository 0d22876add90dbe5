"""Measure what ``merge --qlora`` changes: a QLoRA adapter trained on the bundled tiny base
quantized to NF4, merged with and without ``--qlora nf4``, each compared with the model it was
trained as (the NF4-dequantized base with the adapter attached).

1. bitsandbytes quantizes examples/tiny-base to NF4 (transformers' load_in_4bit, blocks of 64)
   and transformers dequantizes it: the base the adapter sees.
2. adapterctl's engine trains an upper-case LoRA on it (``attach_adapter(trainable=True)``, the
   recipe of examples/train.py, fewer steps).
3. ``adapterctl merge`` into the original float32 base, with and without ``--qlora nf4``.
4. Logits on 32 held-out stories of the example corpus (first 24 tokens each): max and mean |Δ|
   and the share of positions whose top token differs, merged vs trained; and the greedy
   continuation of one prompt.

    python benchmarks/qlora.py            # prints one JSON document (minutes on a busy 2-core machine)
    python benchmarks/qlora.py --retrain  # train again even if benchmarks/_work/qlora/adapter exists
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "qlora"
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO))

import train as ex  # examples/train.py: the bundled adapters' training recipe

STEPS = 30
SPEC = {**ex.CONFIG["adapters"]["upper-lora"], "steps": STEPS}


def nf4_base():
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(REPO / "examples" / "tiny-base"),
                                                 quantization_config=q, dtype=torch.float32,
                                                 device_map="cpu")
    return model.dequantize().float()


def train(model, tok, out: Path):
    import torch

    from adapterctl.core.runtime.attach import attach_adapter

    torch.manual_seed(ex.CONFIG["seed"])
    la, doc = ex.fresh_adapter(model, "qlora-upper", SPEC, out)
    attach_adapter(model, la, name="qlora-upper", trainable=True)
    stream = ex.token_stream(tok, ex.styled_texts("upper", 3000, ex.CONFIG["seed"]))
    cfg = {"steps": STEPS, "lr": SPEC["lr"], "batch_size": ex.CONFIG["adapter_batch_size"],
           "seq_len": ex.CONFIG["adapter_seq_len"]}
    params = [p for p in model.parameters() if p.requires_grad]
    ex.train_loop(model, params, stream, cfg, ex.CONFIG["seed"], "qlora-upper")
    ex.save_adapter(ex.trained_tensors(model, "qlora-upper"), doc, out)


def as_trained(adapter: Path):
    """The model the adapter was trained as: the NF4 round trip of the base, the adapter attached."""
    from adapterctl.core.runtime.attach import attach_adapter
    from adapterctl.core.lora.loaded import load_adapter

    model = nf4_base()
    attach_adapter(model, load_adapter(adapter, name="qlora-upper"), name="qlora-upper")
    return model.eval()


def merge(adapter: Path, out: Path, *flags: str) -> None:
    cmd = [sys.executable, "-m", "adapterctl", "merge", str(REPO / "examples" / "tiny-base"),
           str(adapter), "-o", str(out), "--force", *flags]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)


def compare(trained, merged_dir: Path, batch) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    with torch.no_grad():
        want = trained(**batch).logits
        got = merged(**batch).logits
    mask = batch["attention_mask"].bool()
    diff = (got - want).abs()[mask]
    top = (got.argmax(-1) != want.argmax(-1))[mask]
    return {"max_abs_logit_diff": f"{float(diff.max()):.2e}",
            "mean_abs_logit_diff": f"{float(diff.mean()):.2e}",
            "top1_differs": f"{int(top.sum())}/{top.numel()}"}, merged


def greedy(model, tok, prompt: str) -> str:
    import torch

    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def main() -> None:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    WORK.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(REPO / "examples" / "tiny-base"))
    adapter = WORK / "adapter"
    if "--retrain" in sys.argv or not (adapter / "adapter_model.safetensors").is_file():
        train(nf4_base(), tok, adapter)
    trained = as_trained(adapter)
    stories = ex.corpus(ex.CONFIG["seed"] + 99, 32)  # not the adapter's training texts
    tok.padding_side = "right"
    batch = tok(stories, return_tensors="pt", padding=True, truncation=True, max_length=24)
    report = {"steps": STEPS, "stories": len(stories), "positions": int(batch["attention_mask"].sum())}
    prompt = "the little fox"
    report["greedy"] = {"trained (nf4 base + adapter)": greedy(trained, tok, prompt)}
    for label, flags in (("merge --qlora nf4", ("--qlora", "nf4")), ("merge", ())):
        merge(adapter, WORK / label.replace(" ", "_"), *flags)
        report[label], merged = compare(trained, WORK / label.replace(" ", "_"), batch)
        report["greedy"][label] = greedy(merged, tok, prompt)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
