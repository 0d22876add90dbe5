"""Property tests over every parser that reads files from strangers: each input ends in a result or
an AdapterctlError with its exit code, never another exception, a hang or an allocation the file
does not justify. Pure parsers run in-process (fast); see test_fuzz_cli.py for whole commands."""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapterctl.core.adapter.config import (
    LoraAdapterConfig,
    check_lora_type,
    parse_adapter_config,
    read_adapter_config,
)
from adapterctl.core.adapter.keys import split_keys
from adapterctl.core.adapter.problems import raise_first_error
from adapterctl.core.adapter.validate import config_problems
from adapterctl.errors import EXIT_CODES, AdapterctlError
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.folders.model_dir import locate_model_files
from adapterctl.io.safetensors.header import (
    DTYPE_SIZES,
    SafetensorsHeader,
    parse_header_bytes,
    read_safetensors_header,
)
from tests.hardening.conftest import FUZZ, count

# ----- strategies ---------------------------------------------------------------------------------
HUGE = st.sampled_from([2**31, 2**53, 2**63 - 1, 2**64, 10**30, -(2**63)])
NUMBERS = st.one_of(st.integers(), HUGE, st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
JSON = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=20)
CONFIG_KEYS = ["peft_type", "r", "lora_alpha", "target_modules", "task_type", "use_rslora",
               "use_dora", "lora_bias", "bias", "fan_in_fan_out", "rank_pattern", "alpha_pattern",
               "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
               "trainable_token_indices", "init_lora_weights", "base_model_name_or_path",
               "revision", "peft_version", "use_qalora", "target_parameters", "layer_replication"]
CONFIG_VALUES = st.one_of(JSON, st.sampled_from(["LORA", "lora", "IA3", "pissa", "pissa_niter_4",
                                                 "corda", "none", "all", "q_proj", ".*"]))
CONFIGS = st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=len(CONFIG_KEYS))


def _expect_result_or_ours(fn, *args):
    """Run ``fn``; an AdapterctlError must carry a documented exit code and a message."""
    try:
        return fn(*args)
    except AdapterctlError as err:
        assert err.exit_code in EXIT_CODES and err.exit_code != 1, err
        assert err.message
        return None


# ----- adapter_config.json ------------------------------------------------------------------------
@FUZZ
@given(doc=st.one_of(CONFIGS, st.dictionaries(st.text(max_size=10), JSON, max_size=6)))
def test_adapter_config_any_fields(doc):
    count("adapter_config.json fields (parse_adapter_config)")
    cfg = _expect_result_or_ours(parse_adapter_config, doc, "fuzz")
    if cfg is None:
        return
    assert isinstance(cfg, LoraAdapterConfig) and isinstance(cfg.r, int) and cfg.r > 0
    # the derived views read the same values: they must not raise either
    cfg.variants, cfg.init_kind, cfg.unsupported_variants  # noqa: B018
    _expect_result_or_ours(check_lora_type, cfg, "fuzz")
    _expect_result_or_ours(lambda: raise_first_error(config_problems(cfg), "fuzz"))


@FUZZ
@given(text=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                      st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
                      st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)))
def test_adapter_config_file_any_bytes(tmp_path_factory, text):
    count("adapter_config.json bytes (read_adapter_config)")
    folder = tmp_path_factory.mktemp("cfg", numbered=True)
    (folder / "adapter_config.json").write_bytes(text)
    _expect_result_or_ours(read_adapter_config, folder)


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "adapter_config.json").write_text("[" * 1_000_000 + "]" * 1_000_000)
    with pytest.raises(AdapterctlError) as err:
        read_adapter_config(tmp_path)
    assert err.value.exit_code == 4 and "nested too deeply" in err.value.message


# ----- safetensors headers ------------------------------------------------------------------------
DTYPES = st.one_of(st.sampled_from(sorted(DTYPE_SIZES)), st.text(max_size=6), JSON)
DIMS = st.one_of(st.integers(0, 64), HUGE, st.just(-1))
SHAPES = st.one_of(st.lists(DIMS, max_size=4), st.lists(st.sampled_from([0, 1, 2**52]), max_size=40),
                   JSON)
ENTRY = st.fixed_dictionaries({"dtype": DTYPES, "shape": SHAPES,
                               "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-5, 5000),
                                                                            HUGE), max_size=3), JSON)})
HEADERS = st.dictionaries(st.text(max_size=12), st.one_of(ENTRY, JSON), max_size=6)


def _check_header(h: SafetensorsHeader | None, data_size: int) -> None:
    """A header that passes never promises more bytes than the file holds, nor overlaps."""
    if h is None:
        return
    spans = sorted(t.data_offsets for t in h.tensors.values() if t.nbytes)
    assert all(0 <= a <= b <= data_size for a, b in spans)
    assert all(p[1] <= c[0] for p, c in zip(spans, spans[1:]))
    for t in h.tensors.values():
        assert t.numel * DTYPE_SIZES[t.dtype] == t.nbytes
    split_keys({k: t.shape for k, t in h.tensors.items()})


@FUZZ
@given(doc=HEADERS, data_size=st.integers(0, 5000), meta=st.one_of(st.none(), JSON))
def test_safetensors_header_structured(doc, data_size, meta):
    count("safetensors header JSON (parse_header_bytes)")
    if meta is not None:
        doc = {**doc, "__metadata__": meta}
    raw = json.dumps(doc).encode()
    _check_header(_expect_result_or_ours(parse_header_bytes, raw, "fuzz", data_size), data_size)


@FUZZ
@given(raw=st.binary(max_size=300), data_size=st.integers(0, 2**40))
def test_safetensors_header_random_bytes(raw, data_size):
    count("safetensors header random bytes (parse_header_bytes)")
    _check_header(_expect_result_or_ours(parse_header_bytes, raw, "fuzz", data_size), data_size)


@FUZZ
@given(claimed=st.one_of(st.integers(0, 400), HUGE.filter(lambda n: 0 <= n < 2**64),
                         st.just(2**64 - 1)),
       body=st.binary(max_size=400), tail=st.binary(max_size=64))
def test_safetensors_file_length_prefix(tmp_path_factory, claimed, body, tail):
    """Any 8-byte length (a terabyte, 2**64-1) with any body: refused before allocating it."""
    count("safetensors file bytes (read_safetensors_header)")
    path = tmp_path_factory.mktemp("st", numbered=True) / "x.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + body + tail)
    tracemalloc.start()
    try:
        h = _expect_result_or_ours(read_safetensors_header, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # a few KB of input never costs more than a few MB
    _check_header(h, len(body) + len(tail) - (h.header_size if h else 0))


def test_header_claiming_terabytes_is_not_allocated(tmp_path):
    """A valid-looking header for a 1 TB tensor in a 1 KB file: refused, memory stays small."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**18, 2**20],
                               "data_offsets": [0, 2**40]}}).encode()
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1024)
    tracemalloc.start()
    with pytest.raises(AdapterctlError) as err:
        read_safetensors_header(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.value.exit_code == 4 and "file holds only 1024 data bytes" in err.value.message
    assert peak < 1_000_000


# ----- model config.json and model.safetensors.index.json ------------------------------------------
SHARD_NAMES = st.one_of(st.sampled_from(["model-00001.safetensors", "../outside.safetensors",
                                         "/etc/passwd", "sub/../../x", "", ".", "..",
                                         "link.safetensors", "missing.safetensors"]),
                        st.text(max_size=12), JSON)
INDEX = st.one_of(JSON, st.fixed_dictionaries({"weight_map": st.one_of(
    st.dictionaries(st.text(max_size=8), SHARD_NAMES, max_size=5), JSON),
    "metadata": JSON}))


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """A model folder with one real shard and a symlink pointing out of the folder."""
    base = tmp_path_factory.mktemp("modelfuzz")
    outside = base / "outside.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    outside.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    root = base / "model"
    root.mkdir()
    (root / "model-00001.safetensors").write_bytes(outside.read_bytes())
    (root / "link.safetensors").symlink_to(outside)
    return root


@FUZZ
@given(config=JSON, index=INDEX)
def test_model_config_and_index(model_root, config, index):
    count("model config.json + safetensors index (locate_model_files)")
    (model_root / "config.json").write_text(json.dumps(config))
    (model_root / "model.safetensors.index.json").write_text(json.dumps(index))
    files = _expect_result_or_ours(locate_model_files, model_root)
    if files is None:
        return
    root = model_root.resolve()
    for f in files.weight_files:  # every shard it accepts is a file inside the folder
        assert f.resolve().is_relative_to(root) and f.is_file(), f
    files.model_type  # noqa: B018


@FUZZ
@given(raw=st.binary(max_size=200))
def test_json_reader_any_bytes(tmp_path_factory, raw):
    count("JSON files any bytes (read_json_object)")
    path = tmp_path_factory.mktemp("json", numbered=True) / "config.json"
    path.write_bytes(raw)
    doc = _expect_result_or_ours(read_json_object, path)
    assert doc is None or isinstance(doc, dict)


@pytest.mark.parametrize("entry, says", [
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
    ({"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [2**52] * 30, "data_offsets": [0, 8]}, "more than 2**1000 bytes"),
    ({"dtype": "F4", "shape": [2**52] * 30, "data_offsets": [0, 8]}, "more than 2**1000 bytes"),
])
def test_header_regressions_found_by_fuzzing(entry, says):
    """Found by the properties above: an unhashable dtype (TypeError) and a shape whose byte size
    overflowed a float (OverflowError) escaped as internal errors."""
    with pytest.raises(AdapterctlError) as err:
        parse_header_bytes(json.dumps({"w": entry}).encode(), "x.safetensors", 8)
    assert err.value.exit_code == 4 and says in err.value.message


def test_huge_json_file_is_refused_without_reading_it(tmp_path):
    """A (sparse) 4 GiB adapter_config.json is refused from its size, before any byte is read."""
    with open(tmp_path / "adapter_config.json", "wb") as fh:
        fh.truncate(4 * 2**30)
    tracemalloc.start()
    with pytest.raises(AdapterctlError) as err:
        read_adapter_config(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.value.exit_code == 4 and "more than the 64 MiB" in err.value.message
    assert peak < 1_000_000


@pytest.mark.parametrize("value", [1, 2.5, True, "x"])
def test_rank_pattern_of_the_wrong_type_is_invalid_input(value):
    """Found by test_fuzz_cli: the regex check iterated rank_pattern before its type was checked,
    so ``"rank_pattern": 1`` was an internal error (TypeError)."""
    with pytest.raises(AdapterctlError) as err:
        parse_adapter_config({"peft_type": "LORA", "rank_pattern": value})
    assert err.value.exit_code == 4 and "rank_pattern" in err.value.message
