"""The CLI on target_parameters (MoE expert) adapters: inspect's per-expert view, check's verdict
per engine, and convert's refusal (exit code and message)."""

from __future__ import annotations

from tests.helpers import run_cli
from tests.moe_fixtures import moe_adapter, moe_models  # noqa: F401


def test_inspect_shows_experts_x_rank(moe_models, moe_adapter):  # noqa: F811
    res = run_cli("inspect", moe_adapter("mixtral", r=2), "--base", moe_models["mixtral"], "--all")
    assert res.code == 0, res.stderr
    assert "model.layers.0.mlp.experts.gate_up_proj" in res.stdout and "4x2" in res.stdout
    assert "usable" in res.stdout and "not usable" not in res.stdout
    doc = run_cli("--json", "inspect", moe_adapter("mixtral", r=2)).json
    assert {(m["kind"], m["experts"], m["r"]) for m in doc["modules"]} == {("experts", 4, 2)}


def test_check_says_per_engine(moe_adapter):  # noqa: F811
    doc = run_cli("--json", "check", moe_adapter("mixtral", r=2)).json
    verdicts = {v["engine"]: v for v in doc["results"]}
    assert verdicts["vllm"]["verdict"] == "refuses"  # Triton-only kernels (tests/interop)
    assert any("fused_moe.py" in r["source"] and "triton" in r["message"]
               for r in verdicts["vllm"]["reasons"])
    assert verdicts["sglang"]["verdict"] == "refuses"
    lone = run_cli("--json", "check", moe_adapter("mixtral", r=2, target_parameters=[
        "mlp.experts.gate_up_proj"]), "--engine", "vllm")
    assert lone.code == 10 and "wrong parameter" in lone.stdout


def test_convert_casts_and_refuses_engines(tmp_path, moe_adapter):  # noqa: F811
    adapter = moe_adapter("mixtral", r=2)
    res = run_cli("convert", adapter, tmp_path / "bf16", "--dtype", "bfloat16")
    assert res.code == 0, res.stderr
    doc = run_cli("--json", "inspect", tmp_path / "bf16").json
    assert doc["usable"] and doc["dtypes"] == {"BF16": 8}
    for extra in (["--for", "vllm"], ["--to", "gguf"]):
        res = run_cli("convert", adapter, tmp_path / "out", *extra)
        assert res.code == 5 and "target_parameters" in res.stderr and "hint:" in res.stderr
        assert ("fused_moe.py" in res.stderr) == (extra[0] == "--for")  # the engine's reason
        assert not (tmp_path / "out").exists()


def test_attach_on_a_dense_base_is_refused(tiny_models, moe_adapter):  # noqa: F811
    res = run_cli("attach", tiny_models["llama"], moe_adapter("mixtral", r=2))
    assert res.code == 6 and "experts.gate_up_proj" in res.stderr, res.stderr


def test_generate_gives_peft_greedy_tokens(moe_models, moe_adapter):  # noqa: F811
    """generate (folding what it can, the experts wrapper staying live) against PEFT's greedy."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = moe_models["qwen3_moe"], moe_adapter("qwen3_moe", r=4, lora_alpha=16)
    res = run_cli("--json", "generate", base, "-a", adapter, "-p", "the quick brown", "-n", "12",
                  "--compare")
    assert res.code == 0, res.stderr
    ours = {c["adapter"]: c["completion_token_ids"] for c in res.json["completions"]}
    ids = AutoTokenizer.from_pretrained(str(base))("the quick brown", return_tensors="pt")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    expected = out[0, ids["input_ids"].shape[1]:].tolist()
    assert ours[adapter.name] == expected and ours[None] != expected  # the adapter matters
