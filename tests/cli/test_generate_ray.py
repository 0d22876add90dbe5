"""``generate --engine ray``'s refusals through the real CLI, before anything loads: the flags of
other engines, and Ray missing from this python (the main virtualenv has none). Runs against the
real Ray and vLLM: tests/interop/test_generate_ray.py."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("args, words", [
    (["--replicas", "2"], "--replicas does not apply without --engine ray"),
    (["--ray-address", "auto", "--engine", "vllm"], "--ray-address does not apply without --engine ray"),
    (["--stage", "s", "--engine", "adapterctl"], "--stage does not apply without --engine ray"),
    (["--engine", "ray", "--quantize", "nf4"], "--quantize does not apply with --engine ray"),
    (["--engine", "ray", "--endpoint", "http://127.0.0.1:1"], "--endpoint and --engine ray cannot be combined"),
    (["--engine", "ray", "--replicas", "0"], "--replicas must be at least 1, got 0"),
    (["--engine", "ray", "--ray-address", "nowhere"], "--ray-address 'nowhere' is not HOST:PORT"),
])
def test_cli_refuses_flags_of_other_engines(args, words):
    res = run_cli("generate", "examples/tiny-base", "-p", "x", *args)
    assert res.code == 2 and words in res.stderr, res.stderr


def test_cli_without_ray_installed():
    res = run_cli("--json", "generate", "examples/tiny-base", "-a", "examples/upper-lora", "-p", "x",
                  "--engine", "ray", "--replicas", "2")
    assert res.code == 7, res.stdout + res.stderr
    err = res.json["error"]
    assert err["type"] == "missing_dependency" and "ray[data]" in err["message"]
    assert "Traceback" not in res.stderr
