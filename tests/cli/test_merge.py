"""``adapterctl merge``: JSON shape, --dry-run, and every refusal (exit code, message, nothing
left behind)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import REPO, invoke


def _nothing_left(parent, name="out"):
    return not (parent / name).exists() and not [p for p in parent.iterdir()
                                                 if p.name.startswith(f".{name}.")]


@pytest.fixture
def lora(peft_adapter):
    return peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])


def test_merge_json_document(tiny_models, lora, tmp_path):
    res = invoke("--json", "merge", tiny_models["llama"], lora, "--output", tmp_path / "out")
    assert res.code == 0, res.stderr
    doc = res.json
    assert doc["ok"] and not doc["dry_run"] and doc["tensors_merged"] == 4
    assert doc["shards"] == ["model.safetensors"] and doc["plan"]["num_touched"] == 4
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_weights_syntax_and_the_card(tiny_models, lora, peft_adapter, tmp_path):
    """ADAPTER=WEIGHT and the deprecated --weights write the same model; the card is the one
    writer's merged-model card, and names no base_model for a local base (and says so)."""
    from adapterctl.io.folders.model_card import split_card

    other = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj"])
    new = invoke("--json", "merge", tiny_models["llama"], f"{lora}=0.7", f"{other}=0.3",
                 "-o", tmp_path / "new")
    old = invoke("--json", "merge", tiny_models["llama"], lora, other, "--weights", "0.7,0.3",
                 "-o", tmp_path / "old")
    assert new.code == 0 and old.code == 0, new.stderr + old.stderr
    assert [a["weight"] for a in new.json["plan"]["adapters"]] == [0.7, 0.3]
    assert "--weights is deprecated" in old.stderr and "deprecated" not in new.stderr
    weights = "model.safetensors"
    assert (tmp_path / "new" / weights).read_bytes() == (tmp_path / "old" / weights).read_bytes()
    meta, body = split_card((tmp_path / "new" / "README.md").read_text())
    assert meta == {"library_name": "transformers", "tags": ["merge"],
                    "pipeline_tag": "text-generation"}  # no base_model: a local path
    assert "| 0.7 |" in body and "Command:" in body
    assert "is a local path, not a Hub id: the card names no base_model" in new.stderr
    assert any("local path" in w for w in new.json["plan"]["warnings"])


def test_dry_run_writes_nothing(tiny_models, lora, tmp_path):
    res = invoke("--json", "merge", tiny_models["llama"], lora, "--dry-run", "--max-shard-size", "100KB")
    assert res.code == 0 and res.json["dry_run"] and res.json["plan"]["num_shards"] > 1
    human = invoke("merge", tiny_models["llama"], lora, "-o", tmp_path / "out", "--dry-run")
    assert human.code == 0 and "4 of" in human.stdout and "q_proj" in human.stdout
    assert _nothing_left(tmp_path)


def test_existing_output_needs_force(tiny_models, lora, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    res = invoke("merge", tiny_models["llama"], lora, "-o", tmp_path / "out")
    assert res.code == 2 and "already exists" in res.stderr and "--force" in res.stderr
    assert invoke("merge", tiny_models["llama"], lora, "-o", tmp_path / "out", "--force").code == 0
    assert not (tmp_path / "out" / "x").exists()


def test_wrong_base_names_the_module(tiny_models, lora, tmp_path):
    res = invoke("merge", tiny_models["gpt2"], lora, "-o", tmp_path / "out")
    assert res.code == 6 and "lands nowhere" in res.stderr and "q_proj" in res.stderr
    assert _nothing_left(tmp_path)


def _sharded_copy(tiny_models, tmp_path):
    base = tmp_path / "sharded"
    assert invoke("merge", tiny_models["llama"], tiny_models_lora_dummy(tmp_path), "-o", base,
                  "--max-shard-size", "100KB").code == 0
    return base


def tiny_models_lora_dummy(tmp_path):
    """An adapter whose B is zero: merging it re-saves the base (sharded) unchanged."""
    import torch

    from tests.helpers import write_adapter

    return write_adapter(tmp_path / "zero", {"r": 2, "target_modules": ["q_proj"]}, {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 64),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2)})


def test_missing_shard_is_not_found(tiny_models, lora, tmp_path):
    base = _sharded_copy(tiny_models, tmp_path)
    next(base.glob("model-00002-*.safetensors")).unlink()
    res = invoke("merge", base, lora, "-o", tmp_path / "out")
    assert res.code == 3 and "missing" in res.stderr and "00002" in res.stderr
    assert _nothing_left(tmp_path)


def test_corrupt_shard_is_invalid_input(tiny_models, lora, tmp_path):
    base = _sharded_copy(tiny_models, tmp_path)
    shard = sorted(base.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated: header intact, data cut
    res = invoke("merge", base, lora, "-o", tmp_path / "out")
    assert res.code == 4 and shard.name in res.stderr
    assert _nothing_left(tmp_path)


def test_disk_full_exits_9_and_leaves_nothing(tiny_models, lora, tmp_path):
    def limit():  # writes past 64 KB fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "adapterctl", "--json", "merge", str(tiny_models["llama"]),
                           str(lora), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, preexec_fn=limit, timeout=300)
    assert proc.returncode == 9, proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "io" and "File too large" in err["message"]
    assert _nothing_left(tmp_path)


def test_bad_options_are_usage_errors(tiny_models, lora, tmp_path):
    base = tiny_models["llama"]
    cases = [
        (("merge", base, lora, "-o", tmp_path / "o", "--weights", "1,2"), "2 values for 1 adapters"),
        (("merge", base, lora, lora, "-o", tmp_path / "o", "--combination", "ties"), "--density"),
        (("merge", base, lora, "-o", tmp_path / "o", "--dtype", "int4"), "--dtype"),
        (("merge", base, lora), "--output is required"),
        (("merge", base), "at least one ADAPTER"),
        (("merge", base, lora, "-o", tmp_path / "o", "--max-shard-size", "huge"), "not a size"),
    ]
    for args, message in cases:
        res = invoke(*args)
        assert res.code == 2 and message in res.stderr, (args, res.stderr)
    assert _nothing_left(tmp_path, "o")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_missing_hardware(tiny_models, lora, tmp_path):
    res = invoke("merge", tiny_models["llama"], lora, "-o", tmp_path / "out", "--device", "cuda")
    assert res.code == 7 and "CUDA" in res.stderr and _nothing_left(tmp_path)


def test_randomised_pissa_is_refused(tiny_models, lora, tmp_path):
    ad = tmp_path / "niter"
    shutil.copytree(lora, ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    (ad / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": "pissa_niter_4"}))
    res = invoke("merge", tiny_models["llama"], ad, "-o", tmp_path / "out")
    assert res.code == 5 and "Convert it to plain LoRA first" in res.stderr


def test_to_adapter_writes_an_adapter_and_refuses_dora(tiny_models, lora, peft_adapter, tmp_path):
    other = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj"])
    res = invoke("--json", "merge", "--to-adapter", tiny_models["llama"], f"{lora}=0.5",
                 f"{other}=0.5", "-o", tmp_path / "ab")
    assert res.code == 0 and res.json["method"] == "cat" and res.json["modules"] == 4
    assert res.json["weights"] == [0.5, 0.5] and res.json["adapters"] == [str(lora), str(other)]
    assert (tmp_path / "ab" / "adapter_model.safetensors").is_file()
    old = invoke("--json", "merge", "--to-adapter", lora, other, "--weights", "0.5,0.5", "-o",
                 tmp_path / "ab-old")  # the deprecated spelling: same adapter, and a warning
    assert old.code == 0 and "--weights is deprecated" in old.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (tmp_path / "ab" / name).read_bytes() == (tmp_path / "ab-old" / name).read_bytes()
    dora = peft_adapter("llama", r=4, target_modules=["q_proj"], use_dora=True)
    res = invoke("merge", "--to-adapter", dora, lora, "-o", tmp_path / "cd")
    assert res.code == 5 and "DoRA" in res.stderr and _nothing_left(tmp_path, "cd")


@pytest.mark.parametrize("rank", ["0", "-3"])
def test_to_adapter_rank_below_one_is_a_usage_error(lora, peft_adapter, tmp_path, rank):
    other = peft_adapter("llama", seed=1, r=2, target_modules=["v_proj"])
    res = invoke("merge", "--to-adapter", lora, other, "--combination", "svd", "--rank", rank,
                 "-o", tmp_path / "ab")
    assert res.code == 2 and "--rank" in res.stderr and not (tmp_path / "ab").exists()


def test_threads_flag(tiny_models, lora, tmp_path):
    """--threads N: N tensors at once, reported in the JSON; 0 and --to gguf are refused."""
    res = invoke("--json", "merge", tiny_models["llama"], lora, "--output", tmp_path / "out",
                 "--threads", "3")
    assert res.code == 0, res.stderr
    assert res.json["threads"] == 3
    res = invoke("merge", tiny_models["llama"], lora, "--output", tmp_path / "zero", "--threads", "0")
    assert res.code == 2 and "--threads" in res.stderr and _nothing_left(tmp_path, "zero")
    res = invoke("--json", "merge", tiny_models["llama"], lora, "--output", tmp_path / "m.gguf",
                 "--to", "gguf", "--threads", "2")
    assert res.code == 2 and "--threads" in res.json["error"]["message"]
    assert _nothing_left(tmp_path, "m.gguf")
