"""Tied embeddings (core/merge/tied.py) and renamed heads: the merged model is the attached
adapter, PEFT's unmerged forward (the oracle), not PEFT's merge_and_unload, which puts every delta
into the one shared table; ``tied_like_peft`` reproduces that one on request."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.core.merge.write import execute_merge
from tests.core.merge.test_merge import load_out, max_diff, peft_merged
from tests.helpers import invoke

IDS = torch.tensor([[0, 5, 9, 42, 7, 3, 100, 200]])

#: adapters whose two ends of the tied table differ when attached
UNTIE = {
    "lora_on_lm_head": dict(r=4, target_modules=["q_proj", "lm_head"]),
    "lora_on_embedding": dict(r=4, target_modules=["embed_tokens"]),
    "lora_on_both": dict(r=4, target_modules=["embed_tokens", "lm_head"]),
    "modules_to_save_embedding": dict(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    "modules_to_save_head": dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
}


def merge(base, adapter, out, **options):
    job = plan_merge(base, load_adapters([adapter]), MergeOptions(**options))
    execute_merge(job, out, device="cpu")
    return job


def peft_unmerged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def keys(folder) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


def close(a, b) -> bool:
    """float32 logits within 1e-4, relative to the largest logit where that exceeds 1."""
    return float((a - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("case", list(UNTIE))
def test_merged_model_is_the_attached_one(case, tiny_models, peft_adapter, tmp_path):
    base, adapter = tiny_models["llama_tied"], peft_adapter("llama_tied", **UNTIE[case])
    job = merge(base, adapter, tmp_path / "out")
    assert job.plan.untie_embeddings
    assert any("untied" in w and "--tied-like-peft" in w for w in job.plan.warnings)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= keys(tmp_path / "out")
    merged, oracle = logits(load_out(tmp_path / "out")), logits(peft_unmerged(base, adapter))
    assert close(merged, oracle)
    if case.startswith("lora"):  # PEFT's merge puts the delta into both ends: another model
        assert not close(logits(peft_merged(base, [adapter])), oracle)


@pytest.mark.parametrize("case", ["lora_on_lm_head", "lora_on_embedding", "modules_to_save_head"])
def test_tied_like_peft_reproduces_merge_and_unload(case, tiny_models, peft_adapter, tmp_path):
    base, adapter = tiny_models["llama_tied"], peft_adapter("llama_tied", **UNTIE[case])
    merge(base, adapter, tmp_path / "out", tied_like_peft=True)
    merged, oracle = load_out(tmp_path / "out"), peft_merged(base, [adapter])
    assert max_diff(merged, oracle) <= 1e-5
    assert merged.config.tie_word_embeddings == oracle.config.tie_word_embeddings


def test_shared_changes_keep_the_table_tied(tiny_models, peft_adapter, tmp_path):
    """Trainable-token rows reach both ends when attached: one table, still tied."""
    base = tiny_models["llama_tied"]
    adapter = peft_adapter("llama_tied", r=4, target_modules=["q_proj"], trainable_token_indices=[3, 5])
    job = merge(base, adapter, tmp_path / "out")
    assert not job.plan.untie_embeddings and "lm_head.weight" not in keys(tmp_path / "out")
    assert close(logits(load_out(tmp_path / "out")), logits(peft_unmerged(base, adapter)))


def test_ensure_weight_tying_adds_the_delta_once_and_stays_tied(tiny_models, peft_adapter, tmp_path):
    """PEFT saves both base tables and lm_head's LoRA (the embedding's, transposed): one valid
    adapter, whose merged table is E + ΔE, still shared (PEFT's own merge adds ΔE twice)."""
    base = tiny_models["llama_tied"]
    adapter = peft_adapter("llama_tied", r=4, target_modules=["embed_tokens", "lm_head"],
                           ensure_weight_tying=True)
    job = merge(base, adapter, tmp_path / "out")
    assert not job.plan.untie_embeddings and "lm_head.weight" not in keys(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text()).get("tie_word_embeddings", True)
    oracle = logits(peft_unmerged(base, adapter))
    assert close(logits(load_out(tmp_path / "out")), oracle)
    merge(base, adapter, tmp_path / "peft", tied_like_peft=True)
    assert max_diff(load_out(tmp_path / "peft"), peft_merged(base, [adapter])) <= 1e-5
    assert not close(logits(load_out(tmp_path / "peft")), oracle)


def test_two_different_tables_for_one_tied_table_are_invalid(tiny_models, peft_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    from adapterctl.errors import InvalidAdapterError

    src = peft_adapter("llama_tied", r=4, target_modules=["embed_tokens", "lm_head"],
                       ensure_weight_tying=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    tensors = load_file(str(src / "adapter_model.safetensors"))
    tensors["base_model.model.lm_head.base_layer.weight"] += 1.0
    save_file(tensors, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidAdapterError, match="two different tables"):
        plan_merge(tiny_models["llama_tied"], load_adapters([bad]), MergeOptions())


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    from tests.conftest import build_model
    from tests.fidelity.archs import arch_configs

    return build_model(arch_configs()["gpt_neox"], tmp_path_factory.mktemp("neox") / "gpt_neox")


@pytest.mark.parametrize("kw", [dict(target_modules=["lm_head", "query_key_value"]),
                                dict(target_modules=["query_key_value"], modules_to_save=["lm_head"])])
def test_gpt_neox_head_lands_on_embed_out(neox, kw, tmp_path):
    """transformers renames the checkpoint's embed_out to lm_head for GPTNeoXForCausalLM (a table
    registered under the class name): merge finds it the way from_pretrained does."""
    from tests.conftest import make_peft_adapter

    adapter = make_peft_adapter(neox, tmp_path / "ad", r=4, **kw)
    job = merge(neox, adapter, tmp_path / "out")
    assert any(t["key"] == "embed_out.weight" for t in job.plan.touched)
    assert "embed_out.weight" in keys(tmp_path / "out")
    assert close(logits(load_out(tmp_path / "out")), logits(peft_unmerged(neox, adapter)))


def test_cli_flag_and_message(tiny_models, peft_adapter, tmp_path):
    adapter = peft_adapter("llama_tied", **UNTIE["lora_on_lm_head"])
    res = invoke("--json", "merge", tiny_models["llama_tied"], adapter, "-o", tmp_path / "a")
    assert res.code == 0 and res.json["untie_embeddings"] is True
    assert any("untied" in w for w in res.json["plan"]["warnings"])
    human = invoke("merge", tiny_models["llama_tied"], adapter, "-o", tmp_path / "b")
    assert human.code == 0 and "untied" in human.stderr
    peft = invoke("--json", "merge", tiny_models["llama_tied"], adapter, "-o", tmp_path / "c",
                  "--tied-like-peft")
    assert peft.code == 0 and peft.json["untie_embeddings"] is False


def test_rank_reduced_ensure_weight_tying_adapter_stays_tied(tiny_models, peft_adapter, tmp_path):
    """convert --rank reduces the embedding's LoRA and writes lm_head's as its transpose, so the
    adapter still satisfies ensure_weight_tying: PEFT loads it, merge keeps one table."""
    from adapterctl.core.lora.loaded import load_adapter, tied_pairs

    base = tiny_models["llama_tied"]
    adapter = peft_adapter("llama_tied", r=4, target_modules=["embed_tokens", "lm_head"],
                           ensure_weight_tying=True)
    assert invoke("convert", "--rank", "2", adapter, tmp_path / "r2").code == 0
    assert tied_pairs(load_adapter(tmp_path / "r2").modules) == [("model.embed_tokens", "lm_head")]
    job = merge(base, tmp_path / "r2", tmp_path / "out")
    assert not job.plan.untie_embeddings
    assert close(logits(load_out(tmp_path / "out")), logits(peft_unmerged(base, tmp_path / "r2")))


def test_a_common_tied_layout_is_planned_without_transformers(tiny_models, peft_adapter):
    """The tied table stored by its usual name, no head: names and shapes settle it, so planning
    does not import transformers (seconds: it was most of a 3B merge's fixed cost)."""
    from tests.helpers import run_python

    adapter = peft_adapter("llama_tied", **UNTIE["lora_on_lm_head"])
    code = (
        "import sys\nfrom adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge\n"
        f"job = plan_merge({str(tiny_models['llama_tied'])!r}, load_adapters([{str(adapter)!r}]), "
        "MergeOptions())\nassert job.plan.untie_embeddings\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_tensor_shaped_like_the_table_leaves_the_tie_to_transformers(neox, tmp_path):
    """A tied config whose checkpoint also stores a tensor of the table's shape (GPT-NeoX's
    embed_out, which transformers renames to lm_head): the head is stored after all, so no tie,
    as transformers' tables say; lm_head's LoRA lands on embed_out."""
    import shutil

    from tests.conftest import make_peft_adapter

    base = tmp_path / "neox-tied-config"
    shutil.copytree(neox, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    assert "embed_out.weight" in keys(base)
    adapter = make_peft_adapter(neox, tmp_path / "ad", r=4, target_modules=["lm_head", "query_key_value"])
    job = plan_merge(base, load_adapters([adapter]), MergeOptions())
    assert any(t["key"] == "embed_out.weight" for t in job.plan.touched)
    assert not job.plan.untie_embeddings
