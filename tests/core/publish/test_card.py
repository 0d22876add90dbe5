"""The pushed model card (spec 9.2): PEFT's metadata keys, user text kept, idempotent."""

import pytest

from adapterctl.core.publish.card import render_card, split_card
from adapterctl.errors import InvalidAdapterError

USER_CARD = "---\nlicense: apache-2.0\ntags:\n- chat\n---\n# Title\n\nMy words.\n"


@pytest.mark.parametrize("existing", [None, USER_CARD, "No front matter, just text.\n"])
@pytest.mark.parametrize("kind", ["adapter", "model"])
def test_render_is_idempotent_and_keeps_text(existing, kind):
    once = render_card(existing, "me/x", kind, "org/base")
    assert render_card(once, "me/x", kind, "org/base") == once
    meta, body = split_card(once)
    assert meta["base_model"] == "org/base" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == ("peft" if kind == "adapter" else "transformers")
    if existing:
        assert body.strip().endswith(existing.split("---\n")[-1].strip())


def test_adapter_tags_and_merge_relation():
    meta = split_card(render_card(USER_CARD, "me/x", "adapter", "org/base"))[0]
    assert meta["tags"] == ["chat", "lora", "base_model:adapter:org/base"]
    assert meta["license"] == "apache-2.0"
    merged = split_card(render_card(None, "me/x", "model", "org/base"))[0]
    assert merged["base_model_relation"] == "merge" and "merge" in merged["tags"]


def test_bad_front_matter_is_refused():
    with pytest.raises(InvalidAdapterError, match="front matter"):
        split_card("---\n- a\n- b\n---\ntext\n")


def test_existing_local_folder_is_not_a_model_id(tmp_path, monkeypatch):
    from adapterctl.core.publish.card import looks_like_model_id

    monkeypatch.chdir(tmp_path)
    assert looks_like_model_id("examples/tiny-base")
    (tmp_path / "examples" / "tiny-base").mkdir(parents=True)
    assert not looks_like_model_id("examples/tiny-base")
