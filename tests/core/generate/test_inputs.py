"""generate's inputs without a model: prompt sources and the token-choice filters (transformers'
logits processors are the oracle for top-k, top-p and the repetition penalty)."""

from __future__ import annotations

import io

import pytest
import torch

from adapterctl.core.generate.decoding import (
    DecodingConfig,
    TokenChooser,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
)
from adapterctl.core.generate.prompts import BASE_KEY, DEFAULT_KEY, PromptSpec, collect_prompts
from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError


def test_prompt_sources_in_order(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first line\n\nsecond line\n")
    specs = collect_prompts(["cli"], f, io.StringIO("from stdin\n"))
    assert [s.prompt for s in specs] == ["cli", "first line", "second line", "from stdin"]
    assert [s.id for s in specs] == ["0", "1", "2", "3"]
    assert all(s.adapter is DEFAULT_KEY for s in specs)


def test_jsonl_fields_and_base_aliases(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "adapter": "./lora", "max_new_tokens": 3, "id": "x"}\n'
                 '{"prompt": "b", "adapter": null}\n{"prompt": "c", "adapter": "base"}\n'
                 '{"prompt": "d", "id": 7}\n')
    specs = collect_prompts([], f)
    assert specs[0] == PromptSpec("x", "a", "./lora", 3)
    assert specs[1].adapter == BASE_KEY and specs[2].adapter == BASE_KEY
    assert specs[3] == PromptSpec("7", "d", DEFAULT_KEY, None)


def test_jsonl_is_guessed_from_content_on_stdin():
    specs = collect_prompts([], "-", io.StringIO('{"prompt": "hi", "id": "a"}\n'))
    assert specs == [PromptSpec("a", "hi")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"', "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"text": "a"}', "needs a string 'prompt'"),
    ('{"prompt": "a", "temperature": 1}', "unknown keys temperature"),
    ('{"prompt": "a", "max_new_tokens": 0}', "'max_new_tokens' must be a positive integer"),
    ('{"prompt": "a", "adapter": 3}', "'adapter' must be a string or null"),
])
def test_bad_jsonl_lines_are_refused_with_their_line_number(tmp_path, line, message):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(InvalidAdapterError, match=rf"p.jsonl:2: .*{message}"):
        collect_prompts([], f)


def test_refusals_without_prompts_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(UsageError, match="no prompts given"):
        collect_prompts([])
    with pytest.raises(NotFoundError, match="no such prompts file"):
        collect_prompts([], tmp_path / "missing.txt")
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "id": "1"}\n')
    with pytest.raises(UsageError, match="prompt id '1' is used twice"):
        collect_prompts(["x", "y"], f)


@pytest.mark.parametrize("kw, message", [
    (dict(max_new_tokens=0), "--max-new-tokens"), (dict(temperature=-1), "--temperature"),
    (dict(top_p=0), "--top-p"), (dict(top_k=0), "--top-k"),
    (dict(repetition_penalty=0), "--repetition-penalty"), (dict(stop=("",)), "--stop"),
])
def test_decoding_options_are_checked(kw, message):
    with pytest.raises(UsageError, match=message):
        DecodingConfig(**kw).check()


def test_filters_match_transformers_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    ids = torch.randint(0, 50, (3, 7))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.equal(apply_repetition_penalty(scores, seen, 1.3),
                       RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone()))
    assert torch.equal(filter_top_k(scores, 5), TopKLogitsWarper(5)(ids, scores.clone()))
    assert torch.equal(filter_top_p(scores, 0.7), TopPLogitsWarper(0.7)(ids, scores.clone()))


def test_greedy_by_default_and_sampling_with_a_seed_reproduces():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    greedy = TokenChooser(DecodingConfig(), torch.device("cpu"))
    assert greedy.seed is None and torch.equal(greedy.choose(logits, None)[0], logits.argmax(-1))
    cfg = DecodingConfig(temperature=1.5, top_k=20, top_p=0.9, seed=42, logprobs=True)
    one, two = (TokenChooser(cfg, torch.device("cpu")) for _ in range(2))
    assert torch.equal(one.choose(logits, None)[0], two.choose(logits, None)[0])
    a = TokenChooser(cfg, torch.device("cpu"))
    first = torch.stack([a.choose(logits, None)[0] for _ in range(5)])
    a.reset()
    again = torch.stack([a.choose(logits, None)[0] for _ in range(5)])
    assert torch.equal(first, again) and len(set(first[:, 0].tolist())) > 1  # it does sample
    tokens, logprobs = a.choose(logits, None)
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])
