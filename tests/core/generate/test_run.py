"""generate as a library call (core/generate/run.py): the one loader plus the adapters a prompts
file names, one report shaped like ``generate --json``, and no output of its own."""

from __future__ import annotations

import pytest

from adapterctl.core.runtime.session import AdapterChoice
from adapterctl.core.generate.decoding import DecodingConfig
from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec
from adapterctl.core.generate.run import open_generation, prompt_adapters, run_generation
from tests.core.generate.test_loop import one_thread  # noqa: F401 (an autouse fixture)

DOC_KEYS = {"base", "adapters", "mode", "seed", "interrupted", "elapsed_s", "tokens_per_second",
            "warnings", "completions"}


def test_prompt_adapters_are_those_not_chosen(tmp_path):
    (tmp_path / "a").mkdir()
    chosen = [AdapterChoice(str(tmp_path / "a")), AdapterChoice("user/repo@v1")]
    specs = [PromptSpec("0", "x", None), PromptSpec("1", "x", BASE_KEY), PromptSpec("2", "x", "a"),
             PromptSpec("3", "x", str(tmp_path / "a" / ".." / "a")), PromptSpec("4", "x", "repo"),
             PromptSpec("5", "x", "user/repo@v1"), PromptSpec("6", "x", "user/other"),
             PromptSpec("7", "x", "./b"), PromptSpec("8", "x", "user/other")]
    assert prompt_adapters(chosen, specs) == ["user/other", "./b"]


@pytest.fixture(scope="module")
def loras(peft_adapter):
    return [peft_adapter("llama", seed=i, r=4, target_modules="all-linear") for i in range(2)]


def test_library_run_and_report(tiny_models, loras, capsys):
    specs = [PromptSpec("0", "a small"), PromptSpec("1", "low rank", str(loras[1]))]
    gen = open_generation(str(tiny_models["llama"]), [AdapterChoice(str(loras[0]))], specs)
    assert [a.name for a in gen.session.adapters] == [loras[0].name, loras[1].name]
    seen = []
    report = run_generation(gen, specs, DecodingConfig(max_new_tokens=3), on_complete=seen.append)
    doc = report.to_dict()
    assert set(doc) == DOC_KEYS and doc["mode"] == "mixed" and not report.interrupted
    assert [c["adapter"] for c in doc["completions"]] == [loras[0].name, loras[1].name]
    assert sorted(c.id for c in seen) == ["0", "1"]
    assert capsys.readouterr().out == ""  # the library never prints
    compare = run_generation(gen, specs[:1], DecodingConfig(max_new_tokens=2), compare=True)
    doc = compare.to_dict()
    assert doc["mode"] == ["base", "folded"] and "tokens_per_second" not in doc
    assert [c["adapter"] for c in doc["compare"][0]["completions"]] == [None, loras[0].name]
