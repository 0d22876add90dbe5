"""What the real vLLM (0.32, CPU build) does with a PEFT target_parameters adapter on fused MoE
experts: the measured fact behind check's vLLM verdict (core/engine_rules/rules.expert_findings).

vLLM accepts the adapter (its loader reads PEFT's ``experts`` / ``experts.base_layer`` keys) and
picks its fused-MoE LoRA implementation, whose kernels are Triton; the CPU build has no Triton
backend, so the engine dies at the first generation. If a vLLM upgrade serves it, this test fails
and the rule (and the README's compatibility rows) must change with it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import VOCAB, build_model, make_peft_adapter
from tests.helpers import REPO
from tests.interop.vllm_server import vllm_python


def test_vllm_cpu_dies_on_fused_moe_lora(tmp_path: Path):
    from transformers import MixtralConfig

    base = build_model(MixtralConfig(  # head_dim 32: vLLM's CPU attention needs >= 32
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=64, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
        pad_token_id=2, tie_word_embeddings=False), tmp_path / "mixtral")
    adapter = make_peft_adapter(base, tmp_path / "moe", r=4, lora_alpha=8, perturb=0.5,
                                target_modules=[],
                                target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    spec = {"mode": "engine", "model": str(base), "max_lora_rank": 8, "max_tokens": 4,
            "prompts": [[5, 17, 33, 250, 9]], "adapters": [{"name": "moe", "path": str(adapter)}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([vllm_python(), str(REPO / "tests/interop/vllm_runner.py"),
                           str(tmp_path / "spec.json"), str(tmp_path / "result.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500, check=False)
    log = proc.stdout + proc.stderr
    assert "Using fused MoE LoRA implementation" in log, log[-3000:]  # the adapter was accepted
    assert proc.returncode != 0 and not (tmp_path / "result.json").exists(), log[-3000:]
    assert "module 'triton.language' has no attribute 'float32'" in log, log[-3000:]
