"""CLI smoke tests that need no torch: ``--help`` of every command, ``inspect`` of the bundled
examples (human and ``--json`` shapes), ``push --dry-run`` offline, usage errors, completion.

Marked ``smoke``: ``.ci/lowest-deps.sh`` runs them in a virtualenv holding only the lowest declared
versions of the light dependencies (typer, rich, safetensors, huggingface_hub, pyyaml, numpy) and
no torch, so the declared bounds are the versions these commands are known to work with.
"""

from __future__ import annotations

import pytest

from tests.helpers import REPO, app_commands, run_cli

pytestmark = pytest.mark.smoke

COMMANDS = app_commands()
EXAMPLES = ["upper-lora", "dragon-dora", "pissa-init", "pissa-trained"]
INSPECT_KEYS = {"ok", "source", "path", "peft_type", "task_type", "base_model", "r", "lora_alpha",
                "scaling", "use_rslora", "variants", "init_lora_weights", "target_modules",
                "target_parameters", "exclude_modules", "modules_to_save", "bias", "extras",
                "peft_version",
                "weights_file", "weights_format", "modules", "num_tensors", "num_parameters",
                "size_bytes", "dtypes", "base", "problems", "usable"}
MODULE_KEYS = {"name", "kind", "r", "alpha", "scaling", "a_shape", "b_shape", "dtype", "dora",
               "lora_bias", "base_shape", "a_norm", "b_norm", "delta_norm", "nonfinite", "experts"}
PUSH_DRY_KEYS = {"ok", "dry_run", "repo", "revision", "kind", "base_model", "files", "total_bytes",
                 "card", "replaces", "remote"}


def cli(*args: str, **kw):
    return run_cli(*args, cwd=REPO, env={"HF_HUB_OFFLINE": "1"}, **kw)


def test_help_of_the_app_and_every_command():
    assert cli("--help").code == 0
    for command in COMMANDS:
        res = cli(command, "--help")
        text = " ".join(res.stdout.split())  # older Typer wraps the epilog as one paragraph
        assert res.code == 0 and f"adapterctl {command}" in text, (command, res.stderr)
        assert "Exit codes" in text and "6 incompatible with the base" in text


@pytest.mark.parametrize("name", EXAMPLES)
def test_inspect_examples_json_shape(name):
    res = cli("--json", "inspect", f"examples/{name}")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert set(doc) == INSPECT_KEYS and doc["ok"] and doc["usable"]
    assert doc["modules"] and all(set(m) == MODULE_KEYS for m in doc["modules"])


def test_inspect_human_with_base_and_values():
    res = cli("inspect", "examples/dragon-dora", "--base", "examples/tiny-base", "--check-values")
    assert res.code == 0, res.stderr
    assert "compatible" in res.stdout and "linear+dora" in res.stdout and "usable" in res.stdout
    doc = cli("--json", "inspect", "examples/upper-lora", "--check-values").json
    assert all(m["nonfinite"] == 0 and m["delta_norm"] > 0 for m in doc["modules"])


def test_push_dry_run_offline():
    res = cli("--json", "push", "examples/upper-lora", "me/upper-lora", "--dry-run")
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    assert set(doc) == PUSH_DRY_KEYS and doc["kind"] == "adapter" and doc["base_model"] is None
    assert [f["path"] for f in doc["files"]] == ["adapter_config.json",
                                                 "adapter_model.safetensors", "README.md"]
    assert doc["card"].startswith("---\nlibrary_name: peft\n")
    assert "is a local path, not a Hub id" in res.stderr
    human = cli("push", "examples/upper-lora", "me/upper-lora", "--dry-run",
                "--base-model", "org/tiny-base")
    assert human.code == 0 and "README.md (generated)" in human.stdout
    assert "base_model: org/tiny-base" in human.stdout


def test_errors_are_one_json_document_with_their_exit_code(tmp_path):
    usage = cli("--json", "inspect")
    assert usage.code == 2 and usage.json["error"]["type"] == "usage"
    missing = cli("--json", "inspect", str(tmp_path / "nowhere"))
    assert missing.code == 3 and missing.json["error"]["type"] == "not_found"
    dtype = cli("--json", "merge", "B", "A", "-o", "O", "--dtype", "half")
    assert dtype.code == 2 and "--dtype 'half' is not one of" in dtype.json["error"]["message"]


def test_bash_completion_round_trip():
    env = {"COMP_WORDS": "adapterctl ins", "COMP_CWORD": "1", "_ADAPTERCTL_COMPLETE": "complete_bash"}
    res = run_cli(env=env)
    assert res.code == 0 and res.stdout.split() == ["inspect"]
