"""One meaning per flag (issue 24): ``-a ADAPTER[=WEIGHT]`` everywhere, served names as ``--lora
NAME=ADAPTER``, push's ``--hub-url``, one ``--engine`` vocabulary, ``--revision``/``--token`` where
Hub ids go. Every older spelling still works until the next minor release, with a warning naming
the new one, and is hidden from ``--help``."""

from __future__ import annotations

import re

import pytest

from adapterctl import __version__
from adapterctl.cli.options import REMOVED_IN
from tests.helpers import REPO, app_commands, invoke

BASE = "examples/tiny-base"
UPPER = "examples/upper-lora"
DORA = "examples/dragon-dora"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens there
#: (command, flag) that are deprecated spellings: still parsed, never shown
HIDDEN = [("attach", "--weight"), ("merge", "--weights"), ("push", "--endpoint")]


def test_removal_version_is_the_next_minor_of_the_one_version():
    major, minor = __version__.split(".")[:2]
    assert REMOVED_IN == f"{major}.{int(minor) + 1}" == "0.4"


@pytest.mark.parametrize("command, flag", HIDDEN)
def test_help_shows_no_deprecated_flag(command, flag):
    res = invoke(command, "--help")
    assert res.code == 0
    assert not re.search(rf"{re.escape(flag)}(?![\w-])", res.stdout), res.stdout


@pytest.mark.parametrize("command", app_commands())
def test_help_never_calls_a_served_name_an_adapter(command):
    """-a/--adapter is ADAPTER[=WEIGHT] wherever it appears; NAME=ADAPTER is --lora's."""
    text = " ".join(invoke(command, "--help").stdout.split())
    if "--adapter" in text:
        assert "ADAPTER[=WEIGHT]" in text and "-a NAME=" not in text, command


# ----- serve: --lora NAME=ADAPTER, -a ADAPTER; -a NAME=ADAPTER is the older spelling ------------
def serve(tmp_path, *args):
    return invoke("--json", "serve", BASE, *args, "--dry-run", "--convert-dir", str(tmp_path))


def test_serve_lora_and_adapter(tmp_path):
    res = serve(tmp_path, "--lora", f"up={UPPER}", "-a", UPPER)
    assert res.code == 0 and "deprecated" not in res.stderr, res.stdout + res.stderr
    assert [a["name"] for a in res.json["adapters"]] == ["up", "upper-lora"]


def test_serve_old_name_spelling_still_works_and_warns(tmp_path):
    new = serve(tmp_path, "--lora", f"up={UPPER}")
    old = serve(tmp_path, "-a", f"up={UPPER}")
    assert old.code == 0 and old.json["command"] == new.json["command"]
    assert f"-a NAME=ADAPTER (up={UPPER}) is deprecated and will be removed in 0.4: write --lora up={UPPER}" in old.stderr


def test_serve_refuses_a_weight(tmp_path):
    res = serve(tmp_path, "-a", f"{UPPER}=0.5")
    assert res.code == 2 and "unweighted" in res.json["error"]["message"]


def test_serve_engine_alias_warns_and_unknown_is_refused(tmp_path):
    ok = serve(tmp_path, "--lora", f"up={UPPER}", "--engine", "VLLM")
    assert ok.code == 0 and ok.json["engine"] == "vllm"
    bad = serve(tmp_path, "--engine", "llamacpp")
    assert bad.code == 2 and "not an engine with a server here" in bad.json["error"]["message"]
    assert "--engine llamacpp is deprecated" in bad.stderr and "vllm, sglang" in bad.json["error"]["hint"]


# ----- verify: the same spellings; --revision and --token ---------------------------------------
def verify(*args):
    return invoke("--json", "verify", "--endpoint", UNREACHABLE, *args, "--timeout", "2")


def test_verify_lora_new_and_old_spelling():
    new = verify("--lora", f"up={UPPER}", "--revision", "main", "--token", "hf_secret_token_1")
    assert new.code == 8 and new.json["error"]["type"] == "endpoint", new.stdout
    assert "deprecated" not in new.stderr and "hf_secret_token_1" not in new.stdout + new.stderr
    old = verify("-a", f"up={UPPER}")
    assert old.code == 8 and "write --lora up=" in old.stderr
    plain = verify("-a", UPPER)
    assert plain.code == 8 and "deprecated" not in plain.stderr


def test_verify_needs_an_adapter():
    res = verify()
    assert res.code == 2 and "at least one served adapter" in res.json["error"]["message"]


# ----- check / convert --for: one engine vocabulary ----------------------------------------------
def test_check_engine_alias_warns_with_the_name():
    res = invoke("--json", "check", UPPER, "--engine", "gguf,mlx_lm")
    assert res.code == 0, res.stdout
    assert {r["engine"] for r in res.json["results"]} == {"llama.cpp", "mlx"}
    assert "--engine gguf is deprecated and will be removed in 0.4: write --engine llama.cpp" in res.stderr
    assert "--engine mlx_lm is deprecated" in res.stderr
    assert "deprecated" not in invoke("--json", "check", UPPER, "--engine", "llama.cpp,mlx").stderr


def test_generate_engine_outside_its_part_of_the_vocabulary():
    res = invoke("--json", "generate", BASE, "-p", "x", "--engine", "sglang")
    assert res.code == 2 and "not an engine generate runs on" in res.json["error"]["message"]


# ----- push: --hub-url; --endpoint is the older spelling ----------------------------------------
def push(*args):
    return invoke("--json", "push", UPPER, "me/upper", "--dry-run", *args)


def test_push_hub_url_and_old_endpoint():
    new = push("--hub-url", UNREACHABLE)
    assert new.code == 0 and "deprecated" not in new.stderr, new.stdout
    old = push("--endpoint", UNREACHABLE)
    assert old.code == 0 and old.json == new.json
    assert f"push --endpoint URL is deprecated and will be removed in 0.4: write --hub-url {UNREACHABLE}" in old.stderr
    both = push("--endpoint", UNREACHABLE, "--hub-url", UNREACHABLE)
    assert both.code == 2 and "--hub-url" in both.json["error"]["message"]


# ----- merge: --revision and --token ------------------------------------------------------------
def test_merge_takes_revision_and_token(tmp_path):
    res = invoke("--json", "merge", BASE, UPPER, "--dry-run", "--revision", "main", "--token", "hf_abcdef_123")
    assert res.code == 0, res.stdout + res.stderr
    assert "hf_abcdef_123" not in res.stdout + res.stderr


# ----- deprecation warnings reach --json where the command has warnings ------------------------
def test_json_warnings_carry_the_deprecation(monkeypatch):
    from adapterctl.cli.options import adapter_weights
    from adapterctl.cli.output import Output, Settings, set_output

    out = Output(Settings(json=True))
    set_output(out)
    assert adapter_weights(["a", "b"], [0.5, 1.0]) == (["a", "b"], [0.5, 1.0])
    printed = []
    monkeypatch.setattr("sys.stdout.write", printed.append)
    out.result({"warnings": ["w"]})
    assert '"warnings": ["w", "--weights is deprecated and will be removed in 0.4' in printed[0]
    out.emitted = False
    out.result({"x": 1})
    assert "deprecated" not in printed[1]  # no warnings key: stderr only


def test_docs_show_no_old_spelling():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    commands = [line for page in pages for line in page.read_text().splitlines()
                if line.startswith(("adapterctl ", "$ adapterctl "))]
    assert commands
    assert not [c for c in commands if re.search(r" (serve|verify) .*-a [\w.-]+=[^\d\s]", c)]
    assert not [c for c in commands if re.search(r" push .*--endpoint|--weights? ", c)]
