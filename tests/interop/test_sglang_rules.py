"""``check --engine sglang`` against SGLang's own LoRA loader (sglang 0.5.23 from PyPI, built by
.ci/engines/sglang.sh; tests/interop/sglang_runner.py runs it).

SGLang's server needs CUDA, so it cannot serve end to end here; its LoRA loading and
normalisation code is Python on torch and runs on CPU: configs, validation, normalisation
(q/k/v and gate/up stacking), the target modules and max rank inferred from the start-up
adapters, buffer dims and the placement of every weight. For each adapter below the runner
reports what SGLang did: it raised (``refuses``), or it loaded and its kernels would apply
per module ``scaling * B_i @ A_i`` (the stacked slices it built): equal to PEFT's delta for every
module PEFT adapts (``serves``), or not (``changes``). ``check`` must say the same, and, where
it names serving flags, SGLang must load the adapter with them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_peft_adapter
from tests.helpers import REPO, write_adapter

BASE = REPO / "examples" / "tiny-base"
DEFAULT_SGLANG = Path.home() / ".cache/adapterctl-engines/sglang-0.5.23/bin/python"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: PEFT adapters on the example base (LoraConfig arguments)
KINDS = {
    "q_v": dict(target_modules=["q_proj", "v_proj"]),
    "all_linear": dict(target_modules=ALL),
    "q_only": dict(target_modules=["q_proj"]),
    "q_k_o": dict(target_modules=["q_proj", "k_proj", "o_proj"]),
    "v_only": dict(target_modules=["v_proj"]),
    "up_down": dict(target_modules=["up_proj", "down_proj"]),
    "gate_only": dict(target_modules=["gate_proj"]),
    "rslora": dict(target_modules=["q_proj", "v_proj"], use_rslora=True),
    "in_layer_norm": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["input_layernorm"]),
    "lm_head_full": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "r16": dict(target_modules=["q_proj", "v_proj"], r=16),
    "o_down": dict(target_modules=["o_proj", "down_proj"]),
}


def sglang_python() -> str:
    py = os.environ.get("ADAPTERCTL_SGLANG_PYTHON") or str(DEFAULT_SGLANG)
    if not Path(py).is_file():
        pytest.fail(f"SGLang's virtualenv python not found at {py}: build it with "
                    "`bash .ci/engines/sglang.sh` (or set ADAPTERCTL_SGLANG_PYTHON)")
    return py


def unknown_module_adapter(src: Path, out: Path) -> Path:
    """q_v plus LoRA on ``mlp.fc1``, a module name SGLang's buffers know no size for."""
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj", "fc1"]
    tensors = load_file(str(src / "adapter_model.safetensors"))
    for i in range(4):
        p = f"base_model.model.model.layers.{i}.mlp.fc1"
        tensors[f"{p}.lora_A.weight"] = torch.randn(8, 192) * 0.05
        tensors[f"{p}.lora_B.weight"] = torch.randn(512, 8) * 0.05
    return write_adapter(out, cfg, tensors)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sglang-adapters")
    out = {}
    for i, (name, kw) in enumerate(KINDS.items()):
        kw = {"r": 8, "lora_alpha": 16, **kw}
        out[name] = make_peft_adapter(BASE, root / name, seed=i, **kw)
    out["unknown_module"] = unknown_module_adapter(out["q_v"], root / "unknown_module")
    # convert --for sglang: zero stacking partners (exact), scales baked
    from adapterctl.core.convert.pipeline import ConvertRequest, run_convert

    for name in CONVERTED:
        run_convert(ConvertRequest(str(out[name]), str(root / f"{name}-sglang"), base=str(BASE),
                                   for_engine=("sglang",)))
        out[f"{name}-sglang"] = root / f"{name}-sglang"
    return out


#: adapters check says SGLang does not serve as trained and convert --for sglang fixes
CONVERTED = ["q_only", "q_k_o", "v_only", "up_down", "rslora"]


#: (case, start-up adapters, adapter loaded later, serving flags)
CASES = [(name, [name], None, {}) for name in [*KINDS, "unknown_module"]] + [
    (f"{name}-sglang", [f"{name}-sglang"], None, {}) for name in CONVERTED] + [
    ("later_higher_rank", ["q_v"], "r16", {}),
    ("later_other_modules", ["q_v"], "o_down", {}),
    ("later_with_flags", ["q_v"], "r16", {"max_lora_rank": 16}),
    ("later_modules_with_flags", ["q_v"], "o_down",
     {"lora_target_modules": "q_proj,v_proj,o_proj,down_proj"}),
]


@pytest.fixture(scope="module")
def sglang(adapters, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sglang-run")
    cases = [{"name": name, "out": str(tmp / name), "adapters": [str(adapters[a]) for a in first],
              "later": str(adapters[later]) if later else None, **flags}
             for name, first, later, flags in CASES]
    (tmp / "spec.json").write_text(json.dumps({"base": str(BASE), "cases": cases}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)  # SGLang's own environment, never adapterctl
    proc = subprocess.run([sglang_python(), str(REPO / "tests/interop/sglang_runner.py"),
                           str(tmp / "spec.json"), str(tmp / "result.json")],
                          capture_output=True, text=True, timeout=900, cwd=tmp)
    if proc.returncode != 0:
        pytest.fail(f"SGLang runner failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    result = json.loads((tmp / "result.json").read_text())
    assert result["sglang"] == "0.5.23"
    return {name: {**r, "out": tmp / name} for name, r in result["cases"].items()}


def peft_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's own ΔW per adapted module (get_delta_weight: scaling * B @ A)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(BASE)), str(adapter))
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = mod.get_delta_weight("default").float()
    return out


def observed(report: dict, adapter: Path, original: Path | None = None) -> str:
    """What SGLang did, as a verdict: raised -> refuses; PEFT's deltas (of ``original``, for a
    converted adapter) -> serves; else changes."""
    if report["outcome"] == "raised":
        return "refuses"
    got = load_file(str(report["out"] / "deltas.safetensors"))
    want = {p: d for p, d in peft_deltas(original or adapter).items()}
    for path, delta in want.items():
        if path not in got or not torch.allclose(got[path], delta, rtol=1e-5, atol=1e-6):
            return "changes"
    extra = [p for p, d in got.items() if p not in want and d.abs().max() > 0]
    if extra:
        return "changes"
    # full tensors PEFT applies (modules_to_save) that SGLang never loads into its buffers
    keys = load_file(str(adapter / "adapter_model.safetensors")).keys()
    if any(not (".lora_A." in k or ".lora_B." in k) for k in keys):
        return "changes"
    return "serves"


def check_verdict(paths: list[Path]) -> list:
    from adapterctl.core.engine_rules.check import check_adapters

    report = check_adapters([(str(p), p.name) for p in paths], ["sglang"], base=(str(BASE), "tiny-base"))
    return report.results


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_check_says_what_sglang_does(case, adapters, sglang):
    name, first, later, flags = next(c for c in CASES if c[0] == case)
    report = sglang[case]
    adapter = adapters[later or first[0]]
    original = adapters[case.removesuffix("-sglang")] if case.endswith("-sglang") else None
    seen = observed(report, adapter, original)
    if original is not None:  # convert --for sglang: SGLang applies the original's deltas
        assert seen == "serves", (case, report.get("error"))
    if later is None:
        (result,) = check_verdict([adapter])
        assert result.verdict == seen, (case, report.get("error"), [f.message for f in result.reasons])
        if seen == "refuses":  # check quotes SGLang's own words
            said = " ".join(f.message for f in result.reasons)
            error = report["error"].split(":", 1)[1].strip()[:40]
            assert error.split("'")[0][:25] in said or report["error"].split(":")[0] in said, (said, error)
        return
    # several adapters: check names the flags SGLang needs for the later one
    results = check_verdict([adapters[first[0]], adapter])
    needed = {f for r in results for f in r.flags}
    if not flags:
        assert seen == "refuses", report
        assert needed, "check names no serving flags though SGLang refuses the later adapter"
    else:
        assert seen == "serves", report
        flag_words = " ".join(needed)
        for key, value in flags.items():
            if key == "max_lora_rank":
                assert f"--max-lora-rank {value}" in flag_words
            else:
                assert set(value.split(",")) <= set(flag_words.split("--lora-target-modules ")[1]
                                                    .split()[0].split(",")), flag_words
