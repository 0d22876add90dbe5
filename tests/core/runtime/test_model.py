"""core/runtime/model.py: loading a base and its tokenizer."""

import shutil

import pytest

from adapterctl.core.runtime.model import Placement, load_base
from adapterctl.errors import InvalidAdapterError
from tests.helpers import invoke


def _copy_base(tiny_models, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    return base


@pytest.mark.parametrize("name, content, says", [
    ("tokenizer.json", "{not json", "tokenizer.json is not valid JSON (line 1, column 2"),
    ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json must hold a JSON object"),
    ("tokenizer.json", '{"version": "1.0"}', "transformers cannot load the tokenizer (KeyError"),
])
def test_broken_tokenizer_is_invalid_input_naming_the_file(tiny_models, tmp_path, name, content,
                                                            says):
    """A tokenizer that is there but broken is not "no tokenizer" (exit 3): it is bad input."""
    base = _copy_base(tiny_models, tmp_path)
    (base / name).write_text(content)
    with pytest.raises(InvalidAdapterError) as info:
        load_base(base, Placement(dtype="float32"))
    assert info.value.exit_code == 4 and str(base) in info.value.message
    assert says in info.value.message and info.value.hint
    res = invoke("--json", "generate", base, "-p", "x")
    assert res.code == 4 and res.json["error"]["type"] == "invalid_input"
    assert says in res.json["error"]["message"] and "no tokenizer" not in res.stdout + res.stderr


def test_a_folder_without_tokenizer_files_still_loads(tiny_models, tmp_path):
    base = _copy_base(tiny_models, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (base / name).unlink()
    assert load_base(base, Placement(dtype="float32")).tokenizer is None
