"""The one model-card writer (io/folders/model_card.py, spec 9.2): PEFT's metadata keys for adapters,
transformers' ``merge`` relation for merged models, user text kept, idempotent, and a local path
never named as ``base_model``; the cards convert, merge and merge --to-adapter write."""

import pytest

from adapterctl.errors import InvalidAdapterError
from adapterctl.io.folders.model_card import (
    adapter_card,
    card_base,
    looks_like_model_id,
    render_card,
    split_card,
)

USER_CARD = "---\nlicense: apache-2.0\ntags:\n- chat\n---\n# Title\n\nMy words.\n"
ADAPTER_META = {"library_name": "peft", "base_model": "org/base",
                "tags": ["lora", "base_model:adapter:org/base"], "pipeline_tag": "text-generation"}
MODEL_META = {"library_name": "transformers", "base_model_relation": "merge",
              "base_model": "org/base", "tags": ["merge"], "pipeline_tag": "text-generation"}


@pytest.mark.parametrize("existing", [None, USER_CARD, "No front matter, just text.\n"])
@pytest.mark.parametrize("kind", ["adapter", "model"])
def test_render_is_idempotent_and_keeps_text(existing, kind):
    once = render_card(existing, kind, "org/base", title="me/x")
    assert render_card(once, kind, "org/base", title="me/x") == once
    meta, body = split_card(once)
    assert meta["base_model"] == "org/base" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == ("peft" if kind == "adapter" else "transformers")
    if existing:
        assert body.strip().endswith(existing.split("---\n")[-1].strip())


def test_adapter_tags_and_merge_relation():
    meta = split_card(render_card(USER_CARD, "adapter", "org/base", title="me/x"))[0]
    assert meta["tags"] == ["chat", "lora", "base_model:adapter:org/base"]
    assert meta["license"] == "apache-2.0"
    merged = split_card(render_card(None, "model", "org/base", title="me/x"))[0]
    assert merged == MODEL_META


def test_bad_front_matter_is_refused():
    with pytest.raises(InvalidAdapterError, match="front matter"):
        split_card("---\n- a\n- b\n---\ntext\n")


def test_existing_local_folder_is_not_a_model_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_model_id("examples/tiny-base")
    (tmp_path / "examples" / "tiny-base").mkdir(parents=True)
    assert not looks_like_model_id("examples/tiny-base")
    assert card_base("examples/tiny-base")[0] is None
    assert "is a local path, not a Hub id" in card_base("examples/tiny-base")[1][0]
    assert card_base("org/base@v2") == ("org/base", [])
    assert card_base(None) == (None, [])


def test_adapter_card_of_a_written_folder(tmp_path):
    card, notes = adapter_card("org/base", "LoRA adapter", "Written by `adapterctl convert`.")
    meta, body = split_card(card)
    assert meta == ADAPTER_META and notes == []
    assert "# LoRA adapter" in body and "adapterctl convert" in body and "PeftModel" in body
    local, notes = adapter_card(str(tmp_path), "LoRA adapter", "x")  # a local path: never named
    assert "base_model" not in split_card(local)[0] and str(tmp_path) not in local
    assert notes and "is a local path, not a Hub id" in notes[0]
