"""``check`` with Hub ids: the adapter's config and safetensors header only (HTTP Range reads),
the base's too, against the local test Hub."""

from __future__ import annotations

from tests.helpers import run_cli


def _full_gets(hub, suffix: str) -> int:
    return sum(1 for m, p, h in hub.state.requests if m == "GET" and p.endswith(suffix)
               and not any(k.lower() == "range" for k in h))


def test_check_by_id_reads_headers_only(hub, peft_adapter, tiny_models):
    lora = peft_adapter("llama", r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    hub.seed("testuser/dora", lora)
    hub.seed("testuser/base", tiny_models["llama"])
    res = run_cli("--json", "check", "testuser/dora", "--base", "testuser/base", "--engine",
                  "vllm,mlx")
    assert res.code == 10, res.stderr
    verdicts = {r["engine"]: r for r in res.json["results"]}
    assert verdicts["vllm"]["verdict"] == "refuses" and verdicts["mlx"]["verdict"] == "serves"
    assert verdicts["vllm"]["adapter"] == "testuser/dora"
    assert verdicts["vllm"]["fix"].endswith("--for vllm --base testuser/base")
    assert res.json["base"] == "testuser/base" and res.json["notes"] == []
    assert _full_gets(hub, "/adapter_model.safetensors") == 0
    assert _full_gets(hub, "/model.safetensors") == 0
