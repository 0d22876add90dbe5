"""``eval`` against plain forward passes: the reference (base + an r=16 all-linear LoRA) and one merged
variant scored over 16k tokens, against two plain forward passes (the base and the merged model)
over the same token batches, each side in its own process: wall time and peak RSS, as ratios.

    python benchmarks/eval.py [--quick] [--json PATH]

The base is a random 1.1B Llama in bf16 (under benchmarks/_work/, git-ignored) with a small BPE
tokenizer trained on the bundled example's corpus (eval tokenizes text); the merged variant is
``adapterctl merge``'s output. Both sides load the same two checkpoints in bf16 (``--dtype
bfloat16``: like for like) and run the same padded batches; the times include loading. eval also
runs the base row (always in its table), so it makes three forward passes per batch to the plain
side's two: the ratio against three passes is printed too (``per_pass_ratio``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, WORK, env, write_llama_lora  # noqa: E402

SHAPE = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=4)
QUICK_SHAPE = dict(vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def dims(shape: dict) -> dict[str, tuple[int, int]]:
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def make_inputs(tag: str, shape: dict, tokens: int) -> dict[str, Path]:
    """The base (with a tokenizer), the adapter, its bf16 merge, and a text of ``tokens`` tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sys.path.insert(0, str(REPO / "examples"))
    from corpus import corpus

    base, lora, merged = WORK / f"eval-{tag}-bf16", WORK / f"eval-{tag}-lora", WORK / f"eval-{tag}-merged"
    data = WORK / f"eval-{tag}-{tokens}.txt"
    if not (base / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=2048,
                                                 tie_word_embeddings=False))
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model.save_pretrained(str(base))
        del model
        texts = corpus(7, 3000)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=min(1000, shape["vocab_size"]),
                                                           special_tokens=["<s>", "</s>"]))
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(base))
    if not (lora / "adapter_config.json").is_file():
        write_llama_lora(lora, shape["num_hidden_layers"], dims(shape), base)
    if not (merged / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "adapterctl", "-q", "merge", str(base), str(lora),
                        "--output", str(merged), "--dtype", "bfloat16"], check=True, env=env(), cwd=REPO)
    if not data.is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(base))
        texts, n, seed = [], 0, 100
        while n < tokens:
            story = " ".join(corpus(seed, 20))
            texts.append(story)
            n += len(tok(story)["input_ids"])
            seed += 1
        data.write_text("\n".join(texts))
    return {"base": base, "lora": lora, "merged": merged, "data": data}


EVAL_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from adapterctl.core.eval.run import EvalOptions, run_eval
from adapterctl.core.eval.specs import classify
from adapterctl.core.runtime.session import AdapterChoice, Placement
base, lora, merged, data, ctx, batch, device = sys.argv[1:8]
r = run_eval(base, AdapterChoice(lora), [classify("merged", merged)], data=data,
             options=EvalOptions(dtype="bfloat16", ctx=int(ctx), batch_size=int(batch)),
             placement=Placement(device_map=None if device == "cpu" else device))
print(json.dumps({"seconds": time.perf_counter() - t0, "positions": r.positions,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "kl_mean": r.variants[1].kl_mean}))
"""

PLAIN_CHILD = r"""
import gc, json, resource, sys, time
t0 = time.perf_counter()
import torch
from adapterctl.core.eval.data import read_records, tokenize_records
from adapterctl.core.eval.run import batches
from adapterctl.core.runtime.model import Placement, load_base
base, lora, merged, data, ctx, batch, device = sys.argv[1:8]
placement = Placement(dtype="bfloat16", device_map=None if device == "cpu" else device)
seqs = None
for path in (base, merged):  # one model at a time: one model + one batch of logits at the peak
    lb = load_base(path, placement, tokenizer=seqs is None)
    if seqs is None:
        seqs = tokenize_records(read_records(data), lb.tokenizer, int(ctx))
    dev = next(lb.model.parameters()).device
    with torch.inference_mode():
        for _, ids, mask in batches(seqs, int(batch)):
            lb.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits.float().sum().item()
    del lb
    gc.collect()
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(child: str, inputs: dict, ctx: int, batch: int, device: str) -> dict:
    args = [str(inputs[k]) for k in ("base", "lora", "merged", "data")] + [str(ctx), str(batch), device]
    proc = subprocess.run([sys.executable, "-c", child, *args], capture_output=True, text=True,
                          cwd=REPO, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 2-layer tiny Llama, 2k tokens: smoke test only")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (device_map) where there is a GPU")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    ap.add_argument("--plain-only", action="store_true", help="measure the plain side alone (print its JSON)")
    ap.add_argument("--plain-json", metavar="PATH", help="the plain side as --plain-only measured it")
    args = ap.parse_args()
    tag, shape = ("quick", QUICK_SHAPE) if args.quick else ("1b", SHAPE)
    tokens = 2048 if args.quick else args.tokens
    WORK.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    inputs = make_inputs(tag, shape, tokens)
    setup = time.perf_counter() - t
    if args.plain_json:
        plain = json.loads(Path(args.plain_json).read_text())
    else:
        plain = measure(PLAIN_CHILD, inputs, args.ctx, args.batch, args.device)  # warms the page cache too
    if args.plain_only:
        print(json.dumps(plain))
        return
    ours = measure(EVAL_CHILD, inputs, args.ctx, args.batch, args.device)
    result = {
        "model": "--quick: a 2-layer tiny Llama (smoke test)" if args.quick
        else "random Llama, 1.1B params, bf16; adapter r=16 all-linear; merged variant bf16",
        "shape": shape, "tokens": tokens, "ctx": args.ctx, "batch": args.batch, "device": args.device,
        "setup_seconds": round(setup, 1), "eval": ours, "plain_two_passes": plain,
        "time_ratio": ours["seconds"] / plain["seconds"],
        "per_pass_ratio": ours["seconds"] / (plain["seconds"] * 1.5),
        "rss_ratio": ours["peak_rss_mib"] / plain["peak_rss_mib"],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"eval (reference + base row + merged), {ours['positions']} positions: {ours['seconds']:.1f} s, "
          f"peak RSS {ours['peak_rss_mib']:.0f} MiB")
    print(f"two plain forward passes (base, merged):           {plain['seconds']:.1f} s, "
          f"peak RSS {plain['peak_rss_mib']:.0f} MiB")
    print(f"ratios eval / plain: time {result['time_ratio']:.2f} (per forward pass "
          f"{result['per_pass_ratio']:.2f}), peak RSS {result['rss_ratio']:.2f}")


if __name__ == "__main__":
    main()
