"""Measure what ``merge --qlora`` changes: a QLoRA adapter trained on the bundled tiny base
quantized to NF4, merged with and without ``--qlora nf4``, each compared with the model it was
trained as (the NF4-dequantized base with the adapter attached).

1. bitsandbytes quantizes examples/tiny-base to NF4 (transformers' load_in_4bit, blocks of 64)
   and transformers dequantizes it: the base the adapter sees.
2. adapterctl's engine trains an upper-case LoRA on it (``attach_adapter(trainable=True)``, the
   recipe of examples/train.py, fewer steps).
3. ``adapterctl merge`` into the original float32 base, with and without ``--qlora nf4``.
4. Logits on the prompts of examples/prompts.jsonl: max |Δ| and the share of positions whose top
   token differs, merged vs trained, plus the greedy continuation of one prompt.

    python benchmarks/qlora.py          # prints one JSON document (minutes on a busy 2-core machine)
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

    from adapterctl.core.engine.attach import attach_adapter

    torch.manual_seed(ex.CONFIG["seed"])
    la, doc = ex.fresh_adapter(model, "qlora-upper", SPEC, out)
    attach_adapter(model, la, name="qlora-upper", trainable=True)
    stream = ex.token_stream(tok, ex.styled_texts("upper", 3000, ex.CONFIG["seed"]))
    cfg = {"steps": STEPS, "lr": SPEC["lr"], "batch_size": ex.CONFIG["adapter_batch_size"],
           "seq_len": ex.CONFIG["adapter_seq_len"]}
    params = [p for p in model.parameters() if p.requires_grad]
    ex.train_loop(model, params, stream, cfg, ex.CONFIG["seed"], "qlora-upper")
    ex.save_adapter(ex.trained_tensors(model, "qlora-upper"), doc, out)


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
    return {"max_abs_logit_diff": round(float(diff.max()), 4),
            "mean_abs_logit_diff": round(float(diff.mean()), 5),
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
    trained = nf4_base()
    train(trained, tok, WORK / "adapter")
    trained.eval()
    prompts = [json.loads(line)["prompt"] for line in
               (REPO / "examples" / "prompts.jsonl").read_text().splitlines() if line.strip()]
    batch = tok(sorted(set(prompts)), return_tensors="pt", padding=True)
    report = {"steps": STEPS, "prompts": len(set(prompts)), "positions": int(batch["attention_mask"].sum())}
    prompt = "the little fox"
    report["greedy"] = {"trained (nf4 base + adapter)": greedy(trained, tok, prompt)}
    for label, flags in (("merge --qlora nf4", ("--qlora", "nf4")), ("merge", ())):
        merge(WORK / "adapter", WORK / label.replace(" ", "_"), *flags)
        report[label], merged = compare(trained, WORK / label.replace(" ", "_"), batch)
        report["greedy"][label] = greedy(merged, tok, prompt)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
