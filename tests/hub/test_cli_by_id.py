"""The real CLI in subprocesses with Hub ids: inspect reads headers only, offline mode after a
first download, start-up imports, and merge / attach by id (enabled once those commands land)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, run_cli

HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")


@pytest.fixture
def lora(peft_adapter):
    return peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"])


def _full_gets(hub, suffix: str) -> int:
    return sum(1 for m, p, h in hub.state.requests if m == "GET" and p.endswith(suffix)
               and not any(k.lower() == "range" for k in h))


def test_inspect_by_id_reads_only_the_header(hub, lora, tiny_models):
    hub.seed("testuser/lora", lora)
    hub.seed("testuser/base", tiny_models["llama"])
    res = run_cli("--json", "inspect", "testuser/lora", "--base", "testuser/base")
    assert res.code == 0, res.stderr
    assert res.json["base"]["compatible"] and res.json["num_tensors"] == 8
    assert _full_gets(hub, "/adapter_model.safetensors") == 0
    assert _full_gets(hub, "/model.safetensors") == 0
    assert _full_gets(hub, "/adapter_config.json") == 1


def test_inspect_offline_after_first_run(hub, lora):
    hub.seed("testuser/lora", lora)
    first = run_cli("--json", "inspect", "testuser/lora")
    assert first.code == 0
    hub.state.requests.clear()
    again = run_cli("--json", "inspect", "testuser/lora", env={"HF_HUB_OFFLINE": "1"})
    assert again.code == 0, again.stderr
    assert again.json["modules"] == first.json["modules"] and hub.state.requests == []
    assert "HF_HUB_OFFLINE=1: using the cached copy of testuser/lora@main" in again.stderr
    missing = run_cli("inspect", "testuser/other", env={"HF_HUB_OFFLINE": "1"})
    assert missing.code == 3 and "not in the local Hugging Face cache" in missing.stderr


def test_push_and_inspect_by_id_never_import_torch(hub, lora, tmp_path):
    hub.seed("testuser/lora", lora)
    code = (
        "import sys\nfrom adapterctl.cli.app import main\n"
        "for argv in (['inspect', 'testuser/lora'], ['push', sys.argv[1], 'testuser/pushed']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\nassert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(lora)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "testuser/pushed" in hub.state.repos


# ----- merge / attach by Hub id ------------------------------------------------------------------
def test_merge_by_hub_ids(hub, lora, tiny_models, tmp_path):
    hub.seed("testuser/base", tiny_models["llama"])
    hub.seed("testuser/lora", lora)
    by_id = run_cli("merge", "testuser/base", "testuser/lora", "--output", tmp_path / "a")
    assert by_id.code == 0, by_id.stderr
    local = run_cli("merge", tiny_models["llama"], lora, "--output", tmp_path / "b")
    assert local.code == 0, local.stderr
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


def test_attach_by_hub_ids(hub, lora, tiny_models):
    hub.seed("testuser/base", tiny_models["llama"])
    hub.seed("testuser/lora", lora)
    by_id = run_cli("--json", "attach", "testuser/base", "testuser/lora")
    local = run_cli("--json", "attach", tiny_models["llama"], lora)
    assert by_id.code == local.code == 0, by_id.stderr + local.stderr
    assert _full_gets(hub, "/adapter_model.safetensors") == 1
    assert _full_gets(hub, "/model.safetensors") == 1


def test_inspect_base_by_id_compares_names_by_id(hub, lora, tiny_models, tmp_path):
    import json
    import shutil

    from tests.helpers import invoke

    mine = shutil.copytree(lora, tmp_path / "lora")
    cfg = json.loads((mine / "adapter_config.json").read_text())
    (mine / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "testuser/base"}))
    hub.seed("testuser/lora", mine)
    hub.seed("testuser/base", tiny_models["llama"])
    hub.seed("testuser/base2", tiny_models["llama"])
    same = invoke("--json", "inspect", "testuser/lora", "--base", "testuser/base@main").json
    assert same["base"]["compatible"]
    assert not [p for p in same["problems"] if p["code"] == "base_name_differs"]
    other = invoke("--json", "inspect", "testuser/lora", "--base", "testuser/base2").json
    differs = [p for p in other["problems"] if p["code"] == "base_name_differs"]
    assert differs and "'testuser/base2'" in differs[0]["message"]


def _named_base(src, folder, base: str):
    """A copy of adapter ``src`` whose adapter_config.json names ``base``."""
    import json

    folder.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    return folder


def test_convert_for_sglang_fetches_the_base_the_adapter_names(hub, peft_adapter, tiny_models, tmp_path):
    """No --base: SGLang's zero v_proj partner takes its shape from the adapter's own base, a Hub id
    here, fetched as every command fetches a base given none: its headers only, shapes being all
    this step needs."""
    named = _named_base(peft_adapter("llama", r=4, target_modules=["q_proj"]), tmp_path / "named",
                        "testuser/base")
    hub.seed("testuser/base", tiny_models["llama"])
    res = run_cli("--json", "convert", "--for", "sglang", str(named), str(tmp_path / "o"))
    assert res.code == 0, res.stderr
    assert any("zero LoRA added on" in n for n in res.json["notes"])
    assert any(p.startswith("/api/models/testuser/base") for _, p, _ in hub.state.requests)
    assert _full_gets(hub, "model.safetensors") == 0


def test_convert_dora_for_vllm_fetches_the_base_weights_it_reads(hub, peft_adapter, tiny_models, tmp_path):
    """DoRA -> LoRA reads the base's weights: without --base they come from the Hub base the
    adapter names, and the output equals the one made with that base given locally."""
    named = _named_base(peft_adapter("llama", r=4, target_modules=["q_proj"], use_dora=True),
                        tmp_path / "named", "testuser/base")
    hub.seed("testuser/base", tiny_models["llama"])
    res = run_cli("--json", "convert", "--for", "vllm", str(named), str(tmp_path / "o"))
    assert res.code == 0, res.stderr
    assert _full_gets(hub, "model.safetensors") == 1
    given = run_cli("--json", "convert", "--for", "vllm", str(named), str(tmp_path / "given"),
                    "--base", str(tiny_models["llama"]))
    assert given.code == 0, given.stderr
    assert (tmp_path / "o/adapter_model.safetensors").read_bytes() == (
        tmp_path / "given/adapter_model.safetensors").read_bytes()
