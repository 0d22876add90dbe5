"""``adapterctl check``: verdicts per adapter and engine, exit codes CI gates on, one JSON
document, and no torch import (headers only)."""

from __future__ import annotations

import json

from adapterctl.errors import EXIT_CODES, NotServedError
from tests.helpers import REPO, invoke, run_cli, run_python, write_adapter

UPPER, DRAGON = "examples/upper-lora", "examples/dragon-dora"
RESULT_KEYS = {"adapter", "engine", "engine_version", "verdict", "reasons", "flags", "fix"}


def test_served_everywhere_exits_0_with_one_json_document():
    res = run_cli("--json", "check", UPPER, cwd=REPO)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] is True and "error" not in doc
    assert [r["engine"] for r in doc["results"]] == ["vllm", "sglang", "lorax", "llama.cpp",
                                                      "mlx", "tgi", "trtllm"]
    assert all(set(r) == RESULT_KEYS and r["verdict"] == "serves" for r in doc["results"])


def test_a_refusal_exits_10_and_names_the_fix():
    res = run_cli("--json", "check", UPPER, DRAGON, "--engine", "vllm,llama.cpp", cwd=REPO)
    assert res.code == NotServedError.exit_code == 10
    doc = res.json
    assert doc["ok"] is False and doc["error"]["type"] == "not_served"
    by = {(r["adapter"], r["engine"]): r for r in doc["results"]}
    dora = by[(DRAGON, "vllm")]
    assert dora["verdict"] == "refuses" and dora["engine_version"] == "0.32.0"
    assert dora["reasons"][0] == {"rule": "vllm.dora", "verdict": "refuses",
                                  "message": "vLLM does not yet support DoRA.",
                                  "source": "vllm 0.32.0: vllm/lora/peft_helper.py",
                                  "proof": "executed"}
    assert dora["fix"] == ("adapterctl convert examples/dragon-dora dragon-dora-vllm --for vllm "
                           "--base examples/tiny-base")
    assert by[(UPPER, "vllm")]["flags"] == ["--max-loras 2"]  # two adapters served together
    gguf = by[(DRAGON, "llama.cpp")]
    assert gguf["verdict"] == "refuses" and any("rsLoRA scale ignored" in r["message"]
                                                for r in gguf["reasons"])


def test_human_output_shows_verdicts_reasons_and_fixes():
    res = invoke("check", DRAGON, "--engine", "sglang")
    assert res.code == 10
    out = " ".join(res.stdout.split())
    assert "refuses" in out and "doesn't support DoRA adapters" in out
    assert "lora_manager.py" in out and "--for sglang" in out


def test_exit_code_10_is_documented():
    assert "will not serve an adapter as trained" in EXIT_CODES[10]
    assert "| 10 |" in (REPO / "docs/reference/exit-codes.md").read_text()


def test_check_never_imports_torch():
    code = (
        "import sys\nfrom adapterctl.cli.app import main\n"
        "sys.argv=['adapterctl','--json','check','examples/dragon-dora','examples/upper-lora',"
        "'--base','examples/tiny-base']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 10, e.code\n"
        "heavy=[m for m in ('torch','transformers','peft','accelerate','bitsandbytes','numpy')"
        " if m in sys.modules]\nassert not heavy, heavy\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]


def test_usage_and_input_errors():
    res = invoke("--json", "check", UPPER, "--engine", "tensorrt")
    assert res.code == 2 and "unknown engine 'tensorrt'" in res.json["error"]["message"]
    res = invoke("--json", "check", "no/such/adapter-dir")
    assert res.code == 3


def test_a_legacy_bin_adapter_is_refused_with_the_conversion_to_run(tmp_path):
    import torch

    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}))
    torch.save({"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 4)},
               folder / "adapter_model.bin")
    res = invoke("--json", "check", folder)
    assert res.code == 5 and "--to-safetensors" in res.json["error"]["hint"]


def test_modules_of_another_wrapper_change_nothing_and_are_counted_per_layer(tmp_path):
    import torch

    tensors = {}
    for i in range(4):
        for n, out in (("q_proj", 192), ("v_proj", 64)):
            key = f"base_model.model.model.language_model.layers.{i}.self_attn.{n}"
            tensors[f"{key}.lora_A.weight"] = torch.ones(4, 192)
            tensors[f"{key}.lora_B.weight"] = torch.ones(out, 4)
    folder = write_adapter(tmp_path / "vl", {"r": 4, "lora_alpha": 4}, tensors)
    res = invoke("--json", "check", folder, "--base", REPO / "examples/tiny-base",
                 "--engine", "vllm")
    assert res.code == 10
    reason = res.json["results"][0]["reasons"][0]["message"]
    assert "8 of 8 adapted modules match no module of" in reason
    assert "2 per layer in layers 0-3 (q_proj, v_proj)" in reason
    assert res.json["results"][0]["fix"] is None  # no conversion can guess the right module


def test_a_broken_adapter_gets_inspects_error_not_verdicts(tmp_path):
    import torch

    folder = write_adapter(tmp_path / "broken", {"r": 4, "lora_alpha": 4},
                           {"base_model.model.q_proj.lora_A.weight": torch.ones(8, 16),
                            "base_model.model.q_proj.lora_B.weight": torch.ones(16, 8)})
    res = invoke("--json", "check", folder)
    assert res.code == 4 and "config gives r=4 but lora_A has shape [8, 16]" in \
        res.json["error"]["message"]
    (folder / "adapter_model.safetensors").unlink()
    res = invoke("--json", "check", folder)
    assert res.code == 3 and "no adapter_model.safetensors" in res.json["error"]["message"]
