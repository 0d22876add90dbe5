"""``serve --dry-run``: the server's command line, the adapters checked with the engine's rules
and converted where that is exact (DoRA for vLLM), the LoRA limits, reuse of converted copies,
SGLang's flags, and every refusal. The real server is started in tests/interop/test_scale_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_peft_adapter
from tests.helpers import REPO, invoke, run_cli

BASE = "examples/tiny-base"
UPPER = "examples/upper-lora"
DORA = "examples/dragon-dora"


def dry(*args, convert_dir: Path, extra=()):
    return invoke("--json", "serve", BASE, *args, "--dry-run", "--convert-dir", str(convert_dir),
                  *(["--", *extra] if extra else []))


def test_vllm_command_line_with_a_converted_dora_adapter(tmp_path):
    res = dry("--lora", f"upper={UPPER}", "--lora", f"dragon={DORA}", "--port", "8123",
              convert_dir=tmp_path, extra=["--dtype", "float32"])
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    argv = doc["command"]
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    upper, dragon = doc["adapters"]
    assert not upper["converted"] and upper["verdict"] == "serves"
    assert dragon["converted"] and dragon["verdict"] == "refuses"
    assert Path(dragon["path"]).parent == tmp_path
    cfg = json.loads((Path(dragon["path"]) / "adapter_config.json").read_text())
    assert cfg["use_dora"] is False and cfg["r"] <= 256
    i = argv.index("--lora-modules")
    assert argv[i + 1:i + 3] == [f"upper={(REPO / UPPER).resolve()}", f"dragon={dragon['path']}"]
    # DoRA as an exact LoRA has full rank (192 here): vLLM's next accepted rank is 256; one
    # LoRA slot more than adapters (vLLM's CPU kernels send base rows to the last slot)
    assert doc["limits"] == {"max_lora_rank": 256, "max_loras": 3}
    assert argv[argv.index("--max-lora-rank") + 1] == "256"
    assert argv[-6:] == ["--host", "127.0.0.1", "--port", "8123", "--dtype", "float32"]
    assert argv.count("--dtype") == 1  # the one after --, in place of serve's own


def test_dtype_given_twice_must_agree(tmp_path):
    res = dry("--lora", f"upper={UPPER}", "--dtype", "bfloat16", convert_dir=tmp_path, extra=["--dtype=float16"])
    assert res.code == 2 and "--dtype bfloat16 and, after --, --dtype float16" in res.stdout
    argv = dry("--lora", f"upper={UPPER}", "--dtype", "float16", convert_dir=tmp_path,
               extra=["--dtype", "float16"]).json["command"]
    assert argv.count("--dtype") == 1


def test_converted_dora_generates_what_the_dora_adapter_does(tmp_path):
    res = dry("--lora", f"dragon={DORA}", convert_dir=tmp_path)
    path = res.json["adapters"][0]["path"]
    runs = [invoke("--json", "-q", "generate", BASE, "-a", a, "-p", "the little fox", "-p",
                   "at night,", "-n", "16", "--dtype", "float32") for a in (DORA, path)]
    ids = [[c["completion_token_ids"] for c in r.json["completions"]] for r in runs]
    assert ids[0] == ids[1]


def test_converted_copies_are_reused(tmp_path):
    first = dry("--lora", f"dragon={DORA}", convert_dir=tmp_path).json["adapters"][0]
    second = dry("--lora", f"dragon={DORA}", convert_dir=tmp_path).json["adapters"][0]
    assert first["path"] == second["path"] and second["notes"] == ["converted copy reused"]


def test_sglang_flags(tmp_path):
    res = dry("--lora", f"upper={UPPER}", "--engine", "sglang", convert_dir=tmp_path)
    assert res.code == 0, res.stdout
    argv = res.json["command"]
    assert argv[1:5] == ["-m", "sglang.launch_server", "--model-path", BASE]
    assert argv[argv.index("--lora-paths") + 1] == f"upper={(REPO / UPPER).resolve()}"
    assert argv[argv.index("--max-loras-per-batch") + 1] == "1"
    assert argv[argv.index("--max-lora-rank") + 1] == "8"


def test_human_dry_run_prints_the_command_line(tmp_path):
    res = invoke("serve", BASE, "--lora", f"upper={UPPER}", "--dry-run", "--convert-dir",
                 str(tmp_path))
    assert res.code == 0
    assert "vllm.entrypoints.openai.api_server --model examples/tiny-base --enable-lora" in \
        res.stdout
    assert "upper" in res.stdout and "serves" in res.stdout


def test_an_adapter_no_exact_conversion_fixes_is_refused(tmp_path):
    bad = make_peft_adapter(REPO / BASE, tmp_path / "biased", r=4, lora_alpha=8, lora_bias=True,
                            target_modules=["q_proj"])
    res = dry("--lora", f"b={bad}", convert_dir=tmp_path / "conv")
    assert res.code == 5
    err = res.json["error"]
    assert "vllm refuses" in err["message"] and "biased" in err["message"]
    assert "--drop-unsupported" in err["hint"]


@pytest.mark.parametrize("args, words", [
    (["--lora", f"x={UPPER}", "--lora", f"x={DORA}"], "must be unique"),
    (["--lora", f"{BASE}={UPPER}"], "base model's name"),
    (["--engine", "tgi"], "not an engine with a server"),
    (["--port", "0"], "--port must be in 1-65535"),
])
def test_usage_errors(tmp_path, args, words):
    res = dry(*args, convert_dir=tmp_path)
    assert res.code == 2 and words in res.json["error"]["message"]


def test_json_needs_dry_run():
    res = invoke("--json", "serve", BASE, "-a", UPPER)
    assert res.code == 2 and "--dry-run" in res.json["error"]["message"]


def test_no_vllm_in_this_python_and_no_python_given():
    res = run_cli("serve", BASE, "-a", UPPER)
    assert res.code == 7 and "`vllm`" in res.stderr and "--python" in res.stderr


def test_a_float32_base_is_served_in_float32_not_vllms_auto(tmp_path):
    # vLLM's --dtype auto runs a float32 checkpoint in half precision; adapterctl's engine keeps
    # float32: the server is told the concrete dtype (issue 27)
    for engine in ("vllm", "sglang"):
        argv = dry("--lora", f"upper={UPPER}", "--engine", engine, convert_dir=tmp_path).json["command"]
        assert argv[argv.index("--dtype") + 1] == "float32"
    argv = dry("--dtype", "bfloat16", convert_dir=tmp_path).json["command"]
    assert argv[argv.index("--dtype") + 1] == "bfloat16"


def test_checkpoint_dtype_is_the_one_auto():
    from adapterctl.io.dtypes import checkpoint_dtype, resolve_dtype

    assert checkpoint_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert checkpoint_dtype({"dtype": "float16", "torch_dtype": "float32"}) == "float16"
    assert checkpoint_dtype({}) == "float32"
    assert resolve_dtype("auto", {"dtype": "bfloat16"}) == "bfloat16"
    assert resolve_dtype(None, {"dtype": "bfloat16"}) == "bfloat16"
    assert resolve_dtype("float16", {"dtype": "bfloat16"}) == "float16"


def test_allow_runtime_lora(tmp_path):
    doc = dry("--allow-runtime-lora", convert_dir=tmp_path).json
    argv = doc["command"]
    assert doc["env"] == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert "--enable-lora" in argv and "--lora-modules" not in argv
    assert doc["limits"] == {"max_lora_rank": 64, "max_loras": 4}
    doc = dry("--allow-runtime-lora", "--max-lora-rank", "256", convert_dir=tmp_path).json
    assert doc["command"][doc["command"].index("--max-lora-rank") + 1] == "256"
    res = dry("--allow-runtime-lora", "--max-lora-rank", "100", convert_dir=tmp_path)
    assert res.code == 2 and "vLLM takes one of" in res.json["error"]["message"]


def test_generate_engine_vllm_gets_the_concrete_dtype():
    from adapterctl.cli.generate_engines import _concrete_dtype

    assert _concrete_dtype(None, BASE) == "float32"  # the tiny base's config.json says float32
    assert _concrete_dtype("auto", BASE) == "float32"
    assert _concrete_dtype("bfloat16", BASE) == "bfloat16"
    assert _concrete_dtype(None, "user/not-local") == "auto"  # a Hub base: vLLM resolves it
