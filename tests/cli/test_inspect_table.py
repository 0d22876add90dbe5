"""inspect's module table: modules that differ only by their layer number share a row, full names
stay readable at 80 columns (broken after the layer part, never cut with an ellipsis), --all gives
one row per module; --json is unchanged (one entry per module)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers import run_cli, write_adapter

LAYERS = 32
TARGETS = {"self_attn": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


@pytest.fixture(scope="module")
def all_linear(tmp_path_factory):
    """A 32-layer all-linear adapter (224 modules), one layer with another rank."""
    tensors = {}
    for i in range(LAYERS):
        r = 4 if i == 7 else 8
        for block, names in TARGETS.items():
            for name in names:
                stem = f"base_model.model.model.layers.{i}.{block}.{name}"
                tensors[f"{stem}.lora_A.weight"] = torch.zeros(r, 64)
                tensors[f"{stem}.lora_B.weight"] = torch.zeros(64, r)
    config = {"r": 8, "lora_alpha": 16, "target_modules": [n for v in TARGETS.values() for n in v],
              "rank_pattern": {r"model\.layers\.7\..*": 4}}
    return write_adapter(tmp_path_factory.mktemp("a") / "lora", config, tensors)


def _table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("│") and re.search(r"│ linear", line)]


def test_layers_share_a_row_readable_at_80_columns(all_linear):
    res = run_cli("inspect", all_linear, env={"COLUMNS": "80"})
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in res.stdout
    assert "224 LoRA modules (F32) in 14 rows" in res.stdout
    # 7 rows for layers 0-6 and 8-31, 7 for layer 7 (another rank): names with their layer ranges
    assert len(_table_rows(res.stdout)) == 14
    assert "model.layers.{0-6,8-31}." in res.stdout and "│ model.layers.7. " in res.stdout
    assert "self_attn.q_proj" in res.stdout and "mlp.down_proj" in res.stdout


def test_all_gives_one_row_per_module_and_json_is_per_module(all_linear):
    res = run_cli("inspect", all_linear, "--all", env={"COLUMNS": "200"})
    assert res.code == 0, res.stderr
    assert len(_table_rows(res.stdout)) == 224
    assert "model.layers.31.self_attn.v_proj" in res.stdout
    doc = run_cli("--json", "inspect", all_linear).json
    assert len(doc["modules"]) == 224


def test_check_values_in_a_second_table(all_linear):
    res = run_cli("inspect", all_linear, "--check-values", env={"COLUMNS": "80"})
    assert res.code == 0, res.stderr
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    assert "values (--check-values)" in res.stdout and "…" not in res.stdout
