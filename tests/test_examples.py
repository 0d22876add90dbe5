"""The bundled example: committed files match examples/train.py's CONFIG, and the adapters do
what they claim (measured rates, not bytes)."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from tests.helpers import REPO

EX = REPO / "examples"
sys.path.insert(0, str(EX))
import train  # noqa: E402

PROMPTS = ["the little fox", "a brave bear lived", "at night,", "the old owl went to",
           "the rabbit ate some", "in the winter,", "a happy duck", "the tired horse met"]


def test_manifest_matches_committed_files_and_config():
    manifest = json.loads((EX / "MANIFEST.json").read_text())
    assert manifest["config"] == json.loads(json.dumps(train.CONFIG))
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((EX / rel).read_bytes()).hexdigest() == digest, rel


def test_base_config_is_what_the_script_describes():
    cfg = json.loads((EX / train.CONFIG["base"]["dir"] / "config.json").read_text())
    for key, value in train.CONFIG["base"]["model"].items():
        assert cfg[key] == value, key
    assert cfg["model_type"] == "llama"


@pytest.mark.parametrize("name", list(train.CONFIG["adapters"]))
def test_adapter_configs_are_what_the_script_describes(name):
    spec = train.CONFIG["adapters"][name]
    cfg = json.loads((EX / name / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (spec["r"], spec["lora_alpha"])
    assert sorted(cfg["target_modules"]) == sorted(spec["target_modules"])
    assert cfg["use_dora"] == spec.get("use_dora", False)
    assert cfg["init_lora_weights"] == spec.get("init_lora_weights", True)
    if spec.get("init_dir"):
        init = json.loads((EX / spec["init_dir"] / "adapter_config.json").read_text())
        assert init["init_lora_weights"] is True and init["r"] == spec["r"]


@pytest.fixture(scope="module")
def base():
    from adapterctl.core.runtime.model import Placement, load_base

    return load_base(EX / "tiny-base", Placement(dtype="float32"))


def _complete(base, adapter=None):
    from adapterctl.core.runtime.attach import attach_adapter, detach
    from adapterctl.core.generate.textgen import greedy_complete

    if adapter:
        attach_adapter(base.model, EX / adapter, name="x")
    try:
        return [c.completion for c in greedy_complete(base.model, base.tokenizer, PROMPTS, 24)]
    finally:
        if adapter:
            detach(base.model, "x")


def _upper_rate(texts: list[str]) -> float:
    letters = [c for t in texts for c in t if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(len(letters), 1)


def test_base_writes_readable_lower_case_text(base):
    texts = _complete(base)
    assert _upper_rate(texts) < 0.1
    words = {w.strip(".,") for t in texts for w in t.split()}
    vocab = set(train.ANIMALS + train.PLACES) | {"the", "and", "a", "to", "in", "at"}
    assert len(words & vocab) >= 10  # real words from the corpus, not byte soup


def test_upper_lora_answers_in_upper_case(base):
    assert _upper_rate(_complete(base, "upper-lora")) > 0.9


def test_dragon_dora_talks_about_dragons(base):
    texts = _complete(base, "dragon-dora")
    assert sum("dragon" in t for t in texts) >= 0.75 * len(texts)
    assert not any("dragon" in t for t in _complete(base))


def test_pissa_adapter_talks_about_the_sea(base):
    texts = _complete(base, "pissa-trained")
    assert sum("sea" in t.split() or "sea." in t or "sea," in t for t in texts) >= 0.5 * len(texts)


def test_pissa_pair_converts_to_plain_lora_with_the_same_outputs(base, tmp_path):
    """The committed PiSSA pair is a real demo of `convert --pissa-init`: the plain LoRA it writes,
    on the original base, gives the trained (residual-base) adapter's logits."""
    import torch

    from adapterctl.core.runtime.attach import attach_adapter, detach
    from tests.helpers import invoke

    out = tmp_path / "pissa-as-lora"
    res = invoke("convert", "--pissa-init", EX / "pissa-init", EX / "pissa-trained", out)
    assert res.code == 0, res.stderr
    ids = base.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    logits = {}
    for name in ("pissa-trained", "converted"):
        attach_adapter(base.model, EX / name if name != "converted" else out, name="x")
        with torch.no_grad():
            logits[name] = base.model(ids).logits
        detach(base.model, "x")
    assert torch.allclose(logits["pissa-trained"], logits["converted"], atol=1e-4)
