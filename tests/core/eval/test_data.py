"""eval's data and variant specs, without a model: what is scored, and every refusal."""

from __future__ import annotations

import json

import pytest

from adapterctl.core.eval.data import Record, read_records, tokenize_records
from adapterctl.core.eval.specs import classify, parse_variant
from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError


class CharTokenizer:
    """One token per character, a BOS in front unless add_special_tokens=False (as HF tokenizers)."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}


def test_text_windows_and_completion_only():
    tok = CharTokenizer()
    seqs = tokenize_records([Record("a", text="abcdefg")], tok, ctx=3)  # 8 tokens: 3 + 3 + 2
    assert [s.ids for s in seqs] == [(0, 97, 98), (99, 100, 101), (102, 103)]
    assert [s.positions for s in seqs] == [2, 2, 1]
    (pc,) = tokenize_records([Record("b", prompt="ab", completion="cd")], tok, ctx=16)
    assert pc.ids == (0, 97, 98, 99, 100) and pc.scored_from == 3 and pc.positions == 2
    (cut,) = tokenize_records([Record("c", prompt="abcdef", completion="xy")], tok, ctx=4)
    assert cut.ids == (101, 102, 120, 121) and cut.positions == 2  # the completion kept whole


def test_a_one_token_window_is_dropped_and_nothing_left_is_refused():
    assert len(tokenize_records([Record("a", text="ab")], CharTokenizer(), ctx=2)) == 1  # (0,97), then (98,)
    with pytest.raises(UsageError, match="no token to score"):
        tokenize_records([Record("a", text="")], CharTokenizer(), ctx=4)


def test_read_records(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("one story.\n\nanother one.\n")
    assert read_records(plain) == [Record("a.txt", text="one story.\n\nanother one.\n")]
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "x"}) + "\n\n" + json.dumps({"prompt": "", "completion": "y"}) + "\n")
    assert [r.text or r.completion for r in read_records(jl)] == ["x", "y"]
    for body, match in [('{"text": ""}', "non-empty"), ('{"text": "a", "prompt": "b"}', "`text`"),
                        ("[1]", "expected a JSON object"), ("{bad", "not valid JSON")]:
        jl.write_text(body + "\n")
        with pytest.raises(InvalidAdapterError, match=match):
            read_records(jl)
    with pytest.raises(NotFoundError):
        read_records(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text(" \n")
    with pytest.raises(UsageError, match="empty"):
        read_records(tmp_path / "e.txt")


def test_classify(tmp_path):
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / "adapters.safetensors").write_bytes(b"")
    (tmp_path / "f.gguf").write_bytes(b"GGUF")
    (tmp_path / "other").mkdir()
    kinds = {spec: classify("v", str(spec)).kind for spec in
             [tmp_path / "ad", tmp_path / "m", tmp_path / "mlx", tmp_path / "f.gguf"]}
    assert list(kinds.values()) == ["adapter", "model", "mlx", "gguf"]
    assert classify("v", "BF16").target == "bfloat16" and classify("v", "fp16").target == "float16"
    e = classify("v", "http://127.0.0.1:8000#my-lora")
    assert (e.kind, e.target, e.served) == ("endpoint", "http://127.0.0.1:8000", "my-lora")
    with pytest.raises(UsageError, match="URL#NAME"):
        classify("v", "http://127.0.0.1:8000")
    with pytest.raises(UsageError, match="cannot tell"):
        classify("v", str(tmp_path / "other"))
    with pytest.raises(NotFoundError, match="variant 'v'"):
        classify("v", str(tmp_path / "gone"))
    for bad in ["x", "=bf16", "a b=bf16", "reference=bf16"]:
        with pytest.raises(UsageError):
            parse_variant(bad)
