"""``check --engine mlx`` against mlx-lm's own code (MLX's Linux CPU build, .ci/engines/mlx.sh):
``linear_to_lora_layers`` refuses Conv layers and DoRA on SwitchLinear (MoE experts), a tied
base has no lm_head module, and ``LoRAEmbedding.as_linear`` adds an embedding LoRA to the
logits (PEFT keeps the tied head's base table). tests/interop/mlx_probe.py runs mlx-lm."""

from __future__ import annotations

import json
import subprocess

import pytest

from adapterctl.core.engine_rules.check import ENGINES
from adapterctl.core.adapter.base_info import BaseInfo, read_base_info
from adapterctl.core.engine_rules.rules import evaluate
from tests.core.engine_rules.test_rules import BASE_DIR, P, facts, lora
from tests.helpers import REPO
from tests.interop.test_mlx_lm import mlx_python


@pytest.fixture(scope="module")
def mlx() -> dict:
    proc = subprocess.run([str(mlx_python()), str(REPO / "tests/interop/mlx_probe.py")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        pytest.fail(f"mlx-lm probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def said(f) -> tuple[str, str]:
    verdict, findings = evaluate(ENGINES["mlx"], f)
    return verdict, "\n".join(x.message for x in findings)


def test_conv_lora_is_refused_as_mlx_lm_refuses_it(mlx):
    assert mlx["conv"].startswith("ValueError: Can't convert layer of type Conv")
    conv = {**lora(), f"{P}.0.self_attn.conv.lora_A.weight": (8, 192, 1, 1),
            f"{P}.0.self_attn.conv.lora_B.weight": (192, 8, 1, 1)}
    v, msg = said(facts({"target_modules": ["q_proj", "v_proj", "conv"]}, conv))
    assert v == "refuses" and "Can't convert layer of type Conv" in msg


def test_dora_on_moe_experts_is_refused_as_mlx_lm_refuses_it(mlx):
    assert mlx["switch"] == "ok" and mlx["switch_dora"] == "ValueError: SwitchLinear doesn't support DoRA yet."
    shapes = {}
    for e in range(2):
        k = f"{P}.0.mlp.experts.{e}.w1"
        shapes |= {f"{k}.lora_A.weight": (8, 192), f"{k}.lora_B.weight": (512, 8),
                   f"{k}.lora_magnitude_vector": (512,)}
    v, msg = said(facts({"target_modules": ["w1"], "use_dora": True}, shapes))
    assert v == "refuses" and "SwitchLinear doesn't support DoRA yet." in msg
    plain = {k: s for k, s in shapes.items() if "magnitude" not in k}
    assert said(facts({"target_modules": ["w1"]}, plain))[0] == "serves"


def test_tied_base_has_no_lm_head_and_embedding_lora_reaches_the_logits(mlx):
    assert mlx["tied_has_lm_head"] is False
    assert mlx["logits_differ_from_input_only"] > 1e-3
    base = read_base_info(BASE_DIR, "examples/tiny-base")
    tied = BaseInfo("tied", {**base.config, "tie_word_embeddings": True}, base.params)
    emb = {**lora(), "base_model.model.model.embed_tokens.lora_embedding_A": (8, 872),
           "base_model.model.model.embed_tokens.lora_embedding_B": (192, 8)}
    cfg = {"target_modules": ["q_proj", "v_proj", "embed_tokens"]}
    v, msg = said(facts(cfg, emb, tied))
    assert v == "changes" and "LoRAEmbedding.as_linear" in msg
    head = {**lora(), "base_model.model.lm_head.lora_A.weight": (8, 192),
            "base_model.model.lm_head.lora_B.weight": (872, 8)}
    v, msg = said(facts({"target_modules": ["q_proj", "v_proj", "lm_head"]}, head, tied))
    assert v == "refuses" and "has no lm_head module" in msg
