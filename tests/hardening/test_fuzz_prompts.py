"""Prompt files for ``generate`` (plain text or JSONL) from strangers: any content ends in a list of
prompts or an AdapterctlError, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapterctl.core.generate import prompts
from adapterctl.errors import AdapterctlError
from tests.hardening.conftest import FUZZ, count
from tests.hardening.test_fuzz_parsers import JSON, _expect_result_or_ours

FIELDS = st.dictionaries(st.sampled_from(["prompt", "adapter", "max_new_tokens", "id", "extra"]),
                         st.one_of(JSON, st.sampled_from(["base", "__base__", "", "../x", "/abs"])),
                         max_size=5)
LINE = st.one_of(FIELDS.map(json.dumps), JSON.map(json.dumps), st.text(max_size=40),
                 st.integers(1, 100_000).map(lambda n: '{"a":' + "[" * n + "]" * n + "}"))


@FUZZ
@given(lines=st.lists(LINE, max_size=6), jsonl=st.sampled_from([None, True, False]))
def test_prompt_lines(lines, jsonl):
    count("generate prompt files, text or JSONL (parse_prompt_lines)")
    specs = _expect_result_or_ours(prompts.parse_prompt_lines, "\n".join(lines), "fuzz", jsonl)
    for spec in specs or []:
        assert isinstance(spec.prompt, str)
        assert spec.max_new_tokens is None or (isinstance(spec.max_new_tokens, int)
                                               and spec.max_new_tokens >= 1)


@FUZZ
@given(raw=st.binary(max_size=300), name=st.sampled_from(["p.txt", "p.jsonl"]))
def test_prompt_file_any_bytes(tmp_path_factory, raw, name):
    count("generate prompt files, any bytes (collect_prompts)")
    path = tmp_path_factory.mktemp("prompts", numbered=True) / name
    path.write_bytes(raw)
    _expect_result_or_ours(prompts.collect_prompts, (), path)


def test_deeply_nested_jsonl_line_is_an_error(tmp_path):
    """Found here: a JSONL line nested 100k deep raised RecursionError (an internal error)."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x", "id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(AdapterctlError) as err:
        prompts.collect_prompts((), path)
    assert err.value.exit_code == 4


@pytest.mark.parametrize("value", [[], {}, ["a"], 3, True])
def test_jsonl_adapter_of_the_wrong_type_is_invalid_input(value):
    """Found by test_prompt_lines: ``"adapter": []`` raised TypeError (unhashable) - exit 1."""
    line = json.dumps({"prompt": "hi", "adapter": value})
    with pytest.raises(AdapterctlError) as err:
        prompts.parse_prompt_lines(line, "p.jsonl", jsonl=True)
    assert err.value.exit_code == 4 and "'adapter' must be a string or null" in err.value.message
