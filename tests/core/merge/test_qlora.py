"""``merge --qlora`` (core/merge/qlora.py) against the real thing: transformers quantizing the base
with bitsandbytes (load_in_4bit), dequantized, then PEFT's merge_and_unload; and PEFT's adapter
attached to the real 4-bit model. Plus the detection rules and every refusal.

The models here have every Linear's input size a multiple of 64: bitsandbytes 0.50.2's AVX-512
CPU dequantize_4bit reads block scales per row and gets other shapes wrong (tests/io/checkpoint/
test_fourbit.py), so transformers' dequantize() and Linear4bit's CPU forward would not be the
oracle there; blocks run over the flattened weight, as on CUDA and in io/checkpoint/fourbit.py."""

from __future__ import annotations

import json

import pytest
import torch

from adapterctl.core.merge.plan import MergeOptions, load_adapters, plan_merge
from adapterctl.core.merge.qlora import CARD_PREFIX
from adapterctl.core.merge.write import execute_merge
from tests.conftest import build_model, make_peft_adapter, model_configs
from tests.fidelity.archs import ARCHS, arch_configs
from tests.helpers import invoke
from tests.io.checkpoint.test_fourbit import bnb_dequantize

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def qmodels(tmp_path_factory) -> dict:
    """The session's tiny models with MLP sizes that are multiples of 64 (module docstring)."""
    root = tmp_path_factory.mktemp("qmodels")
    out = {}
    for name in ("llama", "gpt2", "qwen2"):
        cfg = model_configs()[name]
        if hasattr(cfg, "intermediate_size"):
            cfg.intermediate_size = 128
        out[name] = build_model(cfg, root / name)
    return out


@pytest.fixture(scope="module")
def qadapter(qmodels, tmp_path_factory):
    root = tmp_path_factory.mktemp("qadapters")
    made = {}

    def make(base: str, **kw):
        key = repr((base, sorted(kw.items())))
        if key not in made:
            made[key] = make_peft_adapter(qmodels[base], root / f"a{len(made)}", **kw)
        return made[key]

    return make


def bnb_config(quant_type="nf4", double_quant=False):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch.float32)


def load_4bit(base, quant_type="nf4", double_quant=False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, device_map="cpu",
                                                quantization_config=bnb_config(quant_type,
                                                                               double_quant))


def oracle_merge(base, adapter, quant_type="nf4", double_quant=False, flat=False) -> dict:
    """bitsandbytes quantizes the base (transformers' load_in_4bit), bitsandbytes dequantizes
    each Linear4bit into the float model (transposed back for a GPT-2 Conv1D, which transformers
    transposed before quantizing; its own dequantize() turns Conv1D into Linear, which a
    fan_in_fan_out adapter no longer fits), PEFT merges. ``flat``: dequantize each weight as one
    flat tensor (any input size; see the module docstring)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    q = load_4bit(base, quant_type, double_quant)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.no_grad():
        for name, m in q.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                W = (bnb_dequantize(m.weight.data, m.weight.quant_state) if flat else
                     dequantize_4bit(m.weight.data, m.weight.quant_state))
                target = model.get_submodule(name)
                target.weight.copy_(W.T if isinstance(target, Conv1D) else W)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()


def ours(base, adapter, out, **options):
    job = plan_merge(base, load_adapters([adapter]), MergeOptions(**options))
    execute_merge(job, out, device="cpu")
    return job


def merged_state(out) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).state_dict()


def diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


CASES = {
    "llama_nf4": ("llama", "nf4", False, dict(r=4, target_modules=["q_proj", "v_proj"])),
    "llama_fp4_all_linear": ("llama", "fp4", False, dict(r=4, target_modules="all-linear")),
    "llama_nf4_double_quant": ("llama", "nf4", True, dict(r=4, target_modules=["q_proj", "down_proj"])),
    "gpt2_conv1d_nf4": ("gpt2", "nf4", False, dict(r=4, target_modules=["c_attn", "c_fc"],
                                                   fan_in_fan_out=True)),
    "qwen2_biases_nf4_dq": ("qwen2", "nf4", True, dict(r=4, target_modules=["q_proj", "k_proj"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_qlora_merge_equals_bnb_dequantized_peft_merge(case, qmodels, qadapter, tmp_path):
    base, qt, dq, kw = CASES[case]
    adapter = qadapter(base, **kw)
    job = ours(qmodels[base], adapter, tmp_path / "out", qlora=qt, qlora_double_quant=dq)
    got, want = merged_state(tmp_path / "out"), oracle_merge(qmodels[base], adapter, qt, dq)
    assert diff(got, want) <= 1e-5
    # every weight bitsandbytes quantized, targeted or not, is its round trip: the untargeted
    # ones exactly (nothing added), and the merge without --qlora is another model
    plain = ours(qmodels[base], adapter, tmp_path / "plain")
    base_state = merged_state(qmodels[base])
    untouched = [k for k in job.qlora.keys if not any(t["key"] == k for t in job.plan.touched)]
    assert untouched or kw["target_modules"] == "all-linear"
    for k in untouched:
        assert torch.equal(got[k], want[k]) and not torch.equal(got[k], base_state[k]), k
    assert diff(merged_state(tmp_path / "plain"), want) > 1e-3
    assert job.plan.qlora["rule"] == "flag" and plain.plan.qlora["rule"] == "none"
    assert job.plan.qlora["tensors"] == len(job.qlora.keys) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_qlora_merge_on_every_matrix_architecture(arch, tmp_path):
    """The fidelity matrix's 13 architectures (README Compatibility, row `qlora`): all-linear LoRA
    (q/v on Mixtral, whose all-linear PEFT turns into expert parameters), --qlora nf4 with double
    quantization, against bitsandbytes' quantization + PEFT's merge; and exactly the weights
    transformers turned into Linear4bit are round-tripped."""
    import bitsandbytes as bnb

    base = build_model(arch_configs()[arch], tmp_path / arch)
    targets = ["q_proj", "v_proj"] if arch == "mixtral" else "all-linear"
    fan = {"fan_in_fan_out": True} if arch == "gpt2" else {}
    adapter = make_peft_adapter(base, tmp_path / "ad", r=4, target_modules=targets, **fan)
    job = ours(base, adapter, tmp_path / "out", qlora="nf4", qlora_double_quant=True)
    assert diff(merged_state(tmp_path / "out"), oracle_merge(base, adapter, "nf4", True,
                                                             flat=True)) <= 1e-5
    q = load_4bit(base, "nf4", True)
    linear4 = {f"{n}.weight" for n, m in q.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(job.qlora.keys) == len(linear4)
    # Falcon's layers are FalconLinear, a subclass: replace_with_bnb_linear (``type(m) is
    # nn.Linear``) quantizes none of them, so there is nothing to round-trip, and merge says so
    assert (len(linear4) == 0) == (arch == "falcon")
    assert (arch == "falcon") == any("quantizes none" in w for w in job.plan.warnings)


def test_round_tripped_weights_are_transformers_choice(qmodels, qadapter, tmp_path):
    """Every quantized Linear of the 4-bit model, and nothing else (lm_head, embeddings, norms)."""
    import bitsandbytes as bnb

    adapter = qadapter("llama", r=4, target_modules=["q_proj"])
    job = plan_merge(qmodels["llama"], load_adapters([adapter]), MergeOptions(qlora="nf4"))
    q = load_4bit(qmodels["llama"])
    linear4 = {f"{n}.weight" for n, m in q.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert set(job.qlora.keys) == linear4 and len(linear4) == 14
    assert "lm_head.weight" not in job.qlora.keys


def test_qlora_merge_equals_peft_attached_to_the_4bit_model(qmodels, tmp_path):
    """An adapter built by PEFT on the real 4-bit model: our merged model's logits equal PEFT's
    forward through bitsandbytes' Linear4bit layers; merge without --qlora is further off, and
    warns when the card says so (PEFT 0.21 no longer writes its quantization section, its
    older versions did: written here with the same expression PEFT's card code uses)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    pm = get_peft_model(load_4bit(qmodels["llama"]), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(str(tmp_path / "qlora-adapter"))
    card = tmp_path / "qlora-adapter" / "README.md"
    card.write_text(card.read_text() + f"\n## Training procedure\n\n{CARD_PREFIX}\n" + "\n".join(
        [f"- {name}: {value}" for name, value in bnb_config().to_dict().items()]) + "\n")
    ids = torch.tensor([[3, 17, 42, 99, 5, 250, 7]])
    # train mode (no dropout anywhere): in eval mode on an AVX512-BF16 CPU, Linear4bit repacks its
    # weight for a bf16 CPU kernel (bitsandbytes 0.50.2 nn/modules.py), whose rounding is not the
    # weights' business; in train mode it computes with dequantize_4bit's float32 weight
    pm.train()
    with torch.no_grad():
        want = pm(ids).logits
    for flag, out in ((["--qlora", "nf4"], "with"), ([], "without")):
        res = invoke("--json", "merge", qmodels["llama"], tmp_path / "qlora-adapter",
                     "-o", tmp_path / out, *flag)
        assert res.code == 0, res.stderr
    with_doc = invoke("--json", "merge", qmodels["llama"], tmp_path / "qlora-adapter",
                      "--dry-run").json
    assert with_doc["plan"]["qlora"]["rule"] == "suggested"
    assert "bnb_4bit_quant_type: nf4" in with_doc["plan"]["qlora"]["evidence"][0]
    assert any("--qlora nf4" in w for w in with_doc["plan"]["warnings"])
    with torch.no_grad():
        got = {o: AutoModelForCausalLM.from_pretrained(str(tmp_path / o), dtype=torch.float32)(ids).logits
               for o in ("with", "without")}
    assert float((got["with"] - want).abs().max()) <= 1e-5
    assert float((got["without"] - want).abs().max()) > 1e-3


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", False), ("fp4", True)])
def test_base_stored_in_4bit(quant_type, double_quant, qmodels, qadapter, tmp_path):
    """The base is the 4-bit checkpoint: read dequantized in plain torch (io/checkpoint/fourbit.py, nested
    absmaxes too) and merged as the adapter saw it (rule base-is-4bit); --qlora of the same type
    changes nothing, of another type is refused."""
    other_type = "fp4" if quant_type == "nf4" else "nf4"
    load_4bit(qmodels["llama"], quant_type, double_quant).save_pretrained(str(tmp_path / "q4"))
    adapter = qadapter("llama", r=4, target_modules=["q_proj", "v_proj"])
    plain = invoke("--json", "merge", tmp_path / "q4", adapter, "-o", tmp_path / "a")
    same = invoke("--json", "merge", tmp_path / "q4", adapter, "-o", tmp_path / "b", "--qlora",
                  quant_type)
    assert plain.code == same.code == 0
    for doc in (plain.json, same.json):
        assert doc["plan"]["qlora"]["rule"] == "base-is-4bit"
        assert doc["plan"]["qlora"]["quant_type"] == quant_type
        assert doc["plan"]["qlora"]["double_quant"] is double_quant
        assert doc["plan"]["qlora"]["tensors"] == 14
    assert diff(merged_state(tmp_path / "a"), merged_state(tmp_path / "b")) == 0
    want = oracle_merge(qmodels["llama"], adapter, quant_type, double_quant)
    assert diff(merged_state(tmp_path / "a"), want) <= 1e-5
    other = invoke("merge", tmp_path / "q4", adapter, "-o", tmp_path / "c", "--qlora", other_type)
    assert other.code == 2 and f"stored as {quant_type}" in other.stderr
    assert not (tmp_path / "c").exists()


def test_refusals(qmodels, qadapter, tmp_path):
    adapter = qadapter("llama", r=4, target_modules=["q_proj"])
    base = qmodels["llama"]
    cases = [
        (("merge", base, adapter, "-o", tmp_path / "o", "--qlora", "int3"),
         2, "--qlora 'int3': not a bitsandbytes 4-bit type; use nf4 or fp4"),
        (("merge", base, adapter, "-o", tmp_path / "o", "--qlora-double-quant"),
         2, "--qlora-double-quant needs --qlora nf4|fp4"),
        (("merge", "--to-adapter", adapter, adapter, "-o", tmp_path / "o", "--qlora", "nf4"),
         2, "--to-adapter writes no base"),
    ]
    for args, code, message in cases:
        res = invoke(*args)
        assert res.code == code and message in res.stderr, (args, res.stderr)
    as_json = invoke("--json", "merge", base, adapter, "-o", tmp_path / "o", "--qlora", "int3")
    assert as_json.code == 2 and as_json.json["error"]["type"] == "usage"
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q8 = AutoModelForCausalLM.from_pretrained(str(base), device_map="cpu", dtype=torch.float32,
                                              quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    q8.save_pretrained(str(tmp_path / "q8"))
    res = invoke("merge", tmp_path / "q8", adapter, "-o", tmp_path / "o", "--qlora", "nf4")
    assert res.code == 2 and "stored in 8 bits (LLM.int8)" in res.stderr
    pissa = qadapter("llama", r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    res = invoke("merge", base, pissa, "-o", tmp_path / "o", "--qlora", "nf4")
    assert res.code == 5 and "PEFT quantizes the residual" in res.stderr
    assert not (tmp_path / "o").exists()


EVIDENCE = {
    "base_name": ("adapter_config.json", None, "unsloth/llama-3-8b-bnb-4bit", "--qlora nf4|fp4 "),
    "axolotl_card": ("README.md", "base_model: x\nadapter: qlora\nload_in_4bit: true\n", "axolotl",
                     "--qlora nf4|fp4 "),
    "saved_config": ("config.json", {"quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": True}}, "bnb_4bit_quant_type: fp4",
        "--qlora fp4 --qlora-double-quant"),
}


@pytest.mark.parametrize("case", list(EVIDENCE))
def test_evidence_of_a_4bit_training_base(case, qmodels, qadapter, tmp_path):
    import shutil

    ad = tmp_path / "ad"
    shutil.copytree(qadapter("llama", r=4, target_modules=["q_proj"]), ad)
    name, content, said, flags = EVIDENCE[case]
    if name == "adapter_config.json":
        cfg = json.loads((ad / name).read_text())
        (ad / name).write_text(json.dumps({**cfg, "base_model_name_or_path": said}))
    else:
        (ad / name).write_text(content if isinstance(content, str) else json.dumps(content))
    res = invoke("--json", "merge", qmodels["llama"], ad, "--dry-run")
    assert res.code == 0 and res.json["plan"]["qlora"]["rule"] == "suggested"
    assert said in res.json["plan"]["qlora"]["evidence"][0]
    assert any(flags in w for w in res.json["plan"]["warnings"]), res.json["plan"]["warnings"]
    flagged = invoke("--json", "merge", qmodels["llama"], ad, "--dry-run", "--qlora", "nf4")
    assert flagged.json["plan"]["qlora"]["rule"] == "flag"
    assert (case == "saved_config") == any("fp4" in w for w in flagged.json["plan"]["warnings"])
