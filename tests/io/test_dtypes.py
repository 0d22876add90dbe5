"""The one dtype table (io/dtypes.py): every view of it agrees, and ``--dtype`` is validated
against it in every command."""

import pytest
import torch

from adapterctl.errors import UsageError
from adapterctl.io.dtypes import BY_ST, TABLE, WRITABLE, check_dtype, dtype_choices, st_name, torch_name
from adapterctl.io.safetensors.header import DTYPE_SIZES
from adapterctl.io.checkpoint.shard_writer import ST_DTYPES
from adapterctl.io.checkpoint.stored import FLOAT_DTYPES, ST_TO_TORCH, dtype_name, torch_dtype
from tests.helpers import invoke


def test_views_agree_with_the_table():
    assert set(DTYPE_SIZES) == set(BY_ST) and len(TABLE) == len(BY_ST)
    for st, dt in ST_TO_TORCH.items():
        assert dt.itemsize == DTYPE_SIZES[st] and dtype_name(dt) == torch_name(st)
        assert ST_DTYPES[dt] == st == st_name(dtype_name(dt))
    assert [dtype_name(d) for d in FLOAT_DTYPES] == list(WRITABLE)


def test_torch_dtype_and_check():
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert check_dtype(None) is None and check_dtype("auto") == "auto"
    assert dtype_choices(auto=False) == WRITABLE
    for bad, auto in (("int8", True), ("auto", False), ("float64", False)):
        with pytest.raises(UsageError, match=f"--dtype '{bad}' is not one of"):
            check_dtype(bad, auto=auto)
    with pytest.raises(UsageError, match="is not one of float32, bfloat16, float16"):
        torch_dtype("float64")


@pytest.mark.parametrize("command, choices", [
    (["attach", "A"], "auto, float32, bfloat16, float16"),
    (["generate", "B", "-p", "x"], "auto, float32, bfloat16, float16"),
    (["merge", "B", "A", "-o", "O"], "auto, float32, bfloat16, float16"),
    (["convert", "A", "O"], "float32, bfloat16, float16"),
])
def test_every_command_validates_dtype_from_the_table(command, choices):
    """Refused before anything is read (the paths do not exist)."""
    res = invoke("--json", *command, "--dtype", "half")
    assert res.code == 2, res.stdout
    assert res.json["error"]["message"] == f"--dtype 'half' is not one of {choices}"
