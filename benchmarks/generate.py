"""``generate`` side by side with PEFT: adapter cost relative to the base alone.

Makes a random bf16 Llama (~0.2B parameters by default) and r=16 all-linear LoRA adapters with
PEFT, then times greedy generation of ``--new-tokens`` tokens for a batch of ``--batch`` prompts:

* base alone: our decode loop on the bare base, and transformers' ``model.generate``;
* ours, one adapter (folded into the weights for the run);
* ours, one adapter unmerged (``--no-fold``; the quantized-base path), for reference;
* ours, one adapter as ``generate`` runs it: folded only when the run's decode steps outweigh
  the fold (``routing.fold_pays``), else unmerged;
* PEFT unmerged: ``PeftModel.generate``;
* a mixed batch over 4 adapters (each row its own adapter): ours (``row_adapters``) and PEFT's
  (``generate(adapter_names=...)``).

Ratios compare like with like: ours against our loop on the base, PEFT against ``model.generate``
on the base (the loop PEFT runs). ``per step`` excludes the prefill: (t(N tokens) - t(1)) / (N - 1).
Run: ``flock /tmp/adapterctl-bench.lock python benchmarks/generate.py``.

``--engine vllm`` and/or ``--endpoint URL|auto`` compare engines instead (benchmarks/_engines.py):
the same JSONL prompts file (``--prompts`` prompts x 4 adapters) through ``adapterctl generate``
on our engine, on vLLM's offline engine (in vLLM's virtualenv, ``$ADAPTERCTL_VLLM_PYTHON``) and on
a server (``auto``: ``adapterctl serve`` started on a free port), as tokens per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapterctl.core.runtime import attach as engine  # noqa: E402
from adapterctl.core.runtime.session import AttachedAdapter  # noqa: E402
from adapterctl.core.generate.decoding import DecodingConfig  # noqa: E402
from adapterctl.core.generate.loop import generate_completions  # noqa: E402
from adapterctl.core.generate.prompts import PromptSpec  # noqa: E402
from adapterctl.core.generate.routing import EngineRouter  # noqa: E402


class IdTokenizer:
    """Prompts are space-separated token ids: the benchmark needs no trained tokenizer."""

    eos_token_id = None
    bos_token_id = None
    pad_token_id = 0
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def make_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.inter,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # every run makes exactly --new-tokens tokens
    model.generation_config.pad_token_id = 0
    return model


def make_adapters(model, root: Path, n: int, r: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False,
                         task_type="CAUSAL_LM")
        pm = get_peft_model(model, cfg)
        folder = root / f"lora{i}"
        pm.save_pretrained(str(folder))
        pm.unload()  # back to the bare base for the next adapter
        out.append(folder)
    return out


def clock(kind: str):
    """CPU time of this process by default: with one torch thread it is what the work costs,
    steady on a machine shared with other jobs (wall time there measures the neighbours)."""
    return time.process_time if kind == "cpu" else time.perf_counter


def time_cases(cases: dict, lengths: tuple[int, ...], reps: int, now) -> dict:
    """Best of ``reps`` per (case, length), the cases interleaved round-robin so slow spells of
    the machine fall on all of them alike."""
    best = {(label, n): float("inf") for label in cases for n in lengths}
    for label, make in cases.items():  # warm-up
        make(lengths[0])()
    for _ in range(reps):
        for label, make in cases.items():
            for n in lengths:
                fn = make(n)
                t0 = now()
                fn()
                best[label, n] = min(best[label, n], now() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: steadier on a shared machine)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="process CPU time (default; use with --threads 1) or wall time")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="the figures as JSON: on stdout, or written to PATH (the table too)")
    ap.add_argument("--engine", choices=("vllm",), help="compare with vLLM's offline engine")
    ap.add_argument("--endpoint", metavar="URL|auto", help="compare with a server (auto: start "
                    "one with adapterctl serve)")
    ap.add_argument("--prompts", type=int, default=64, help="--engine/--endpoint: prompts per "
                    "adapter")
    ap.add_argument("--concurrency", type=int, default=64, help="--endpoint: requests in flight")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = make_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt_len), generator=g)
    texts = [" ".join(map(str, row.tolist())) for row in ids]
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(model, Path(tmp), 4, args.r)
        if args.engine or args.endpoint:
            from benchmarks._engines import run_engines

            g = torch.Generator().manual_seed(2)
            more = torch.randint(3, args.vocab, (args.prompts, args.prompt_len), generator=g)
            run_engines(model, folders, [" ".join(map(str, r.tolist())) for r in more], args)
            return
        figures = run_all(model, folders, ids, texts, args)
    report(figures, n_params, args)


def run_all(model, folders, ids, texts, args) -> dict:
    import copy

    from peft import PeftModel

    plain = copy.deepcopy(model)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(folders[0]), adapter_name="a0")
    for i, f in enumerate(folders[1:], 1):
        peft_model.load_adapter(str(f), adapter_name=f"a{i}")
    peft_model.set_adapter("a0")
    ours = model
    adapters = []
    for i, f in enumerate(folders):
        engine.attach_adapter(ours, str(f), name=f"a{i}")
        adapters.append(AttachedAdapter(f"a{i}", str(f), f, 1.0))
    tok = IdTokenizer()
    mixed_names = [f"a{i % 4}" for i in range(args.batch)]
    attention = torch.ones_like(ids)

    def ours_fn(keys, fold=True, auto=False):
        specs = [PromptSpec(str(i), t, k) for i, (t, k) in enumerate(zip(texts, keys))]
        router = EngineRouter(ours, adapters, {}, can_fold=fold, auto_fold=auto)

        def run(n):
            cfg = DecodingConfig(max_new_tokens=n)
            return lambda: generate_completions(ours, tok, specs, cfg, router=router,
                                                batch_size=args.batch)
        return run

    def hf_fn(m, **kw):
        def run(n):
            return lambda: m.generate(input_ids=ids, attention_mask=attention, do_sample=False,
                                      max_new_tokens=n, min_new_tokens=n, **kw)
        return run

    base_keys = ["__base__"] * args.batch
    cases = {
        "base (ours)": ours_fn(base_keys),
        "base (transformers generate)": hf_fn(plain),
        "ours, 1 adapter (folded)": ours_fn(["a0"] * args.batch),
        "ours, 1 adapter (unmerged)": ours_fn(["a0"] * args.batch, fold=False),
        "ours, 1 adapter (auto, as generate)": ours_fn(["a0"] * args.batch, auto=True),
        "ours, mixed 4 adapters": ours_fn(mixed_names),
        "PEFT unmerged": hf_fn(peft_model),
        "PEFT mixed 4 adapters": hf_fn(peft_model, adapter_names=mixed_names),
    }
    best = time_cases(cases, (args.new_tokens, 1), args.reps, clock(args.clock))
    figures = {}
    for label in cases:
        full, first = best[label, args.new_tokens], best[label, 1]
        figures[label] = {"total_s": full, "prefill_s": first,
                          "step_s": (full - first) / max(args.new_tokens - 1, 1)}
        print(f"{label:32s} total {full:7.3f}s  per step {figures[label]['step_s'] * 1e3:7.2f} ms",
              file=sys.stderr)
    return figures


def report(figures: dict, n_params: int, args) -> None:
    def ratio(label, ref, key):
        return figures[ref][key] / figures[label][key]

    rows = []
    for label in figures:
        ref = "base (transformers generate)" if ("PEFT" in label or "transformers" in label) else "base (ours)"
        rows.append({"case": label, **{k: round(v, 4) for k, v in figures[label].items()},
                     "vs_base_total": round(ratio(label, ref, "total_s"), 3),
                     "vs_base_step": round(ratio(label, ref, "step_s"), 3)})
    doc = {"params": n_params, "args": vars(args), "rows": rows}
    if args.json == "-":
        print(json.dumps(doc, indent=2))
        return
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{n_params / 1e9:.2f}B-parameter bf16 Llama, batch {args.batch}, prompt "
          f"{args.prompt_len} tokens, {args.new_tokens} new tokens, r={args.r} all-linear, "
          f"{torch.get_num_threads()} thread(s), {args.clock} time, best of {args.reps}\n")
    print("| case | total s | ms/step | x base (total) | x base (per step) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['total_s']:.3f} | {r['step_s'] * 1e3:.1f} | "
              f"{r['vs_base_total']:.2f} | {r['vs_base_step']:.2f} |")


if __name__ == "__main__":
    main()
