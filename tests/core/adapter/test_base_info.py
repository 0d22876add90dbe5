"""core/adapter/base_info.py: "is lm_head tied" answered as transformers answers it, held against
transformers itself (tiny models built from saved configs, and its config classes' defaults)."""

import json

import pytest
import torch

from adapterctl.core.adapter.base_info import (
    TEXT_TIE_FORWARDED,
    TIED_BY_DEFAULT,
    BaseInfo,
    read_base_info,
    tied_embeddings,
)
from tests.vlm_fixtures import TEXT, vlm_config


def _text(kind, **kw):
    import transformers as T

    small = {k: v for k, v in TEXT.items() if k != "num_key_value_heads"}
    if kind == "gpt2":
        return T.GPT2Config(vocab_size=TEXT["vocab_size"], n_embd=64, n_layer=2, n_head=4, n_positions=128, **kw)
    cls = {"llama": T.LlamaConfig, "gemma": T.GemmaConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config,
           "mistral": T.MistralConfig, "phi3": T.Phi3Config}[kind]
    return cls(**small, **({"head_dim": 16} if kind in ("gemma", "qwen3") else {}), **kw)


def _omit(doc):  # a config.json that leaves the value to the model type's default
    doc.pop("tie_word_embeddings", None)
    if isinstance(doc.get("text_config"), dict):
        doc["text_config"].pop("tie_word_embeddings", None)


def _in_text_config(value):  # saved before transformers 5: the value inside text_config only
    def edit(doc):
        _omit(doc)
        doc["text_config"]["tie_word_embeddings"] = value
    return edit


def _outer(value):
    def edit(doc):
        _omit(doc)
        doc["tie_word_embeddings"] = value
    return edit


CASES = {
    "llama-omitted": (lambda: _text("llama"), _omit),
    "llama-true": (lambda: _text("llama"), _outer(True)),
    "gemma-omitted": (lambda: _text("gemma"), _omit),
    "gemma-false": (lambda: _text("gemma"), _outer(False)),
    "qwen2-omitted": (lambda: _text("qwen2"), _omit),
    "qwen2-true": (lambda: _text("qwen2"), _outer(True)),
    "qwen3-omitted": (lambda: _text("qwen3"), _omit),
    "mistral-omitted": (lambda: _text("mistral"), _omit),
    "phi3-omitted": (lambda: _text("phi3"), _omit),
    "gpt2-omitted": (lambda: _text("gpt2"), _omit),
    "gpt2-false": (lambda: _text("gpt2"), _outer(False)),
    "llava-omitted": (lambda: vlm_config("llava"), _omit),
    "llava-text-true": (lambda: vlm_config("llava"), _in_text_config(True)),
    "llava-outer-true": (lambda: vlm_config("llava"), _outer(True)),
    "qwen2_5_vl-omitted": (lambda: vlm_config("qwen2_5_vl"), _omit),
    "qwen2_5_vl-text-true": (lambda: vlm_config("qwen2_5_vl"), _in_text_config(True)),
    "gemma3-omitted": (lambda: vlm_config("gemma3"), _omit),
    "gemma3-outer-false": (lambda: vlm_config("gemma3"), _outer(False)),
    "gemma3-text-false": (lambda: vlm_config("gemma3"), _in_text_config(False)),
    "mllama-omitted": (lambda: vlm_config("mllama"), _omit),
}


def _transformers_ties(folder) -> bool:
    """Build the model transformers builds from the folder's config.json and look."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight is emb.weight


@pytest.mark.parametrize("case", CASES)
def test_tied_as_transformers_ties(tmp_path, case):
    build, edit = CASES[case]
    build().save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    edit(doc)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert tied_embeddings(doc) is _transformers_ties(tmp_path), doc.get("model_type")


@pytest.mark.slow
def test_the_default_tables_are_transformers_own():
    """Every model type transformers knows: its config built with no arguments ties (or not)
    exactly when TIED_BY_DEFAULT says so; the forwarding of text_config's True, likewise."""
    import dataclasses
    import warnings

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    tied, forwarded = set(), set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mt in CONFIG_MAPPING_NAMES:
            try:
                cls = CONFIG_MAPPING[mt]
            except Exception:  # an optional dependency of that model is missing: not ours to judge
                continue
            fields = {f.name: f.default for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            try:
                value = getattr(cls(), "tie_word_embeddings", False)
            except Exception:  # a config that needs arguments: its declared default
                value = fields.get("tie_word_embeddings")
            if value is True:
                tied.add(mt)
            if "text_config" in fields:
                try:
                    c = cls(tie_word_embeddings=False, text_config={"tie_word_embeddings": True})
                except Exception:
                    continue
                if getattr(c, "tie_word_embeddings", False) is True:
                    forwarded.add(mt)
    # the tables may name types an older transformers does not know yet (param2moe: 5.25)
    known = set(CONFIG_MAPPING_NAMES)
    assert sorted(tied ^ (TIED_BY_DEFAULT & known)) == [], "update TIED_BY_DEFAULT in core/adapter/base_info.py"
    assert sorted(forwarded ^ (TEXT_TIE_FORWARDED & known)) == [], "update TEXT_TIE_FORWARDED"


def test_base_info_reads_a_model_folder(tiny_models):
    info = read_base_info(tiny_models["llama_tied"])
    assert info.tie_word_embeddings and info.output_is_embedding and info.stores_lm_head is False
    assert info.architecture == "LlamaForCausalLM" and info.vocab_size and info.num_layers == 2
    assert info.layout == "text" and not info.is_vlm
    assert info.param_shape("lm_head.weight") == info.param_shape("model.embed_tokens.weight")
    untied = read_base_info(tiny_models["llama"])
    assert not untied.tie_word_embeddings and untied.stores_lm_head and not untied.output_is_embedding


def test_text_config_sizes_and_a_layer_output_is_not_the_head():
    info = BaseInfo("vlm", {"model_type": "llava", "text_config": {"vocab_size": 99, "num_hidden_layers": 3}},
                    {"model.layers.0.attention.output.weight": (4, 4), "model.embed_tokens.weight": (99, 4)})
    assert info.is_vlm and info.vocab_size == 99 and info.num_layers == 3 and info.layout == "text"
    assert info.stores_lm_head is False and info.output_is_embedding


def test_default_base_is_the_first_adapters_base(tmp_path, tiny_models):
    from adapterctl.core.adapter.base_info import default_base, local_base
    from adapterctl.errors import NotFoundError, UsageError
    from tests.helpers import write_adapter

    named = write_adapter(tmp_path / "named", {"base_model_name_or_path": str(tiny_models["llama"])}, {})
    hub = write_adapter(tmp_path / "hub", {"base_model_name_or_path": "user/some-base"}, {})
    none = write_adapter(tmp_path / "none", {}, {})
    assert default_base([named, none], ["named", "none"]) == str(tiny_models["llama"])
    assert default_base([hub], ["hub"]) == "user/some-base"  # a Hub id, resolved by the caller
    with pytest.raises(NotFoundError, match="no base_model_name_or_path"):
        default_base([none], ["none"])
    with pytest.raises(UsageError, match="no base model given"):
        default_base([], [])
    assert local_base(str(tiny_models["llama"])) == tiny_models["llama"]
    assert local_base("user/some-base") is None and local_base(str(named)) is None and local_base(None) is None
