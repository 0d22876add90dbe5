"""The convert command: modes, usage errors (exit 2), --json shape, outputs inspect accepts."""

from __future__ import annotations

import pytest

from tests.convert_fixtures import make_finetune, make_mutated_run
from tests.helpers import invoke


@pytest.fixture(scope="module")
def lora(peft_adapter):
    return peft_adapter("llama", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize("args,message", [
    (["--pissa-init", "I", "--base", "B", "S", "O"], "--pissa-init and --base cannot be combined"),
    (["--extract", "B", "S", "O"], "--extract needs --rank"),
    (["--rank", "2", "--energy", "0.9", "S", "O"], "--rank and --energy cannot be combined"),
    (["S", "O"], "nothing to do"),
    (["--dtype", "int8", "S", "O"], "--dtype 'int8' is not one of float32, bfloat16, float16"),
    (["--skip-unfactorable", "--rank", "2", "S", "O"], "only applies to --extract"),
    (["--rank", "two", "S", "O"], "Invalid value for '--rank'"),
])
def test_usage_errors_exit_2(args, message):
    res = invoke("--json", "convert", *args)
    assert res.code == 2, res.stdout
    err = res.json["error"]
    assert err["type"] == "usage" and message in err["message"] and err["hint"]


def test_rank_reduction_json_and_inspect(lora, tmp_path):
    out = tmp_path / "r2"
    res = invoke("--json", "convert", "--rank", "2", lora, out)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["ok"] and doc["steps"] == ["rank-reduce"] and doc["r"] == 2
    assert doc["num_modules"] == 4 and len(doc["modules"]) == 4
    assert set(doc["modules"][0]) == {"module", "r_before", "r_after", "rel_error", "energy"}
    ins = invoke("inspect", out)
    assert ins.code == 0 and "usable" in ins.stdout


def test_human_output_and_existing_output(lora, tmp_path):
    out = tmp_path / "e"
    res = invoke("convert", "--energy", "0.9", lora, out)
    assert res.code == 0 and "rel. error" in res.stdout and "wrote" in res.stdout
    again = invoke("convert", "--energy", "0.9", lora, out)
    assert again.code == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert invoke("convert", "--energy", "0.9", lora, out, "--force").code == 0


def test_missing_source_exit_3(tmp_path):
    res = invoke("--json", "convert", "--rank", "2", tmp_path / "nope", tmp_path / "o")
    assert res.code == 3 and res.json["error"]["type"] == "not_found"


def test_pissa_cli_and_refusal_without_conversion(tiny_models, tmp_path):
    run = make_mutated_run(tiny_models["llama"], tmp_path / "run", "pissa", peft_convert=False,
                           r=4, lora_alpha=8, target_modules=["q_proj"])
    bad = invoke("--json", "convert", "--rank", "2", run.trained, tmp_path / "x")
    assert bad.code == 2 and "--pissa-init" in bad.json["error"]["hint"]
    res = invoke("--json", "convert", "--pissa-init", run.init, run.trained, tmp_path / "o",
                 "--dtype", "bfloat16")
    assert res.code == 0 and res.json["steps"] == ["mutated-init", "dtype=bfloat16"]
    assert res.json["r"] == 8 and res.json["dtypes"] == ["bfloat16"]
    unsupported = invoke("--json", "convert", "--base", tiny_models["llama"], tmp_path / "o",
                         tmp_path / "y")  # the plain LoRA output has nothing to recompute
    assert unsupported.code == 5 and "cannot be recomputed" in unsupported.json["error"]["message"]


def test_extract_cli(tiny_models, tmp_path):
    make_finetune(tiny_models["llama"], tmp_path / "ft", ["model.layers.0.mlp.up_proj.weight"])
    res = invoke("--json", "convert", "--extract", tiny_models["llama"], tmp_path / "ft",
                 tmp_path / "o", "--rank", "3")
    assert res.code == 0, res.stdout
    assert res.json["steps"] == ["extract"] and res.json["r"] == 3
    assert [m["module"] for m in res.json["modules"]] == ["model.layers.0.mlp.up_proj"]
    assert invoke("inspect", tmp_path / "o").code == 0
