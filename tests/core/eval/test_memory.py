"""eval holds one model at a time: the reference's model is released before a merged or dtype
variant loads, and each of those before the next (core/eval/run.py). Checked structurally: every
model load_base makes is watched through a weak reference, and at each load the ones still alive
are counted; the figures are those of the variants scored in the reference's pass."""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from tests.helpers import REPO, invoke

EX = REPO / "examples"


def test_models_are_loaded_one_at_a_time(tmp_path, monkeypatch):
    import sys

    import adapterctl.core.runtime.model as model_mod

    sys.path.insert(0, str(EX))
    from corpus import corpus

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(99, 3)))
    for name, extra in (("m1", ()), ("m2", ("--dtype", "bfloat16"))):
        res = invoke("-q", "merge", EX / "tiny-base", EX / "upper-lora", "--output", tmp_path / name, *extra)
        assert res.code == 0, res.stderr

    real, seen, alive_at_load = model_mod.load_base, [], []

    def watched(*args, **kwargs):
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in seen))
        lb = real(*args, **kwargs)
        seen.append(weakref.ref(lb.model))
        return lb

    monkeypatch.setattr(model_mod, "load_base", watched)
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--variant", f"m1={tmp_path / 'm1'}", "--variant", "half=bf16",
                 "--variant", f"m2={tmp_path / 'm2'}", "--variant", f"dragon={EX / 'dragon-dora'}")
    assert res.code == 0, res.stderr
    # the reference's base, then m1, half and m2, each loaded with no other model alive
    assert alive_at_load == [0, 0, 0, 0]
    gc.collect()
    assert all(ref() is None for ref in seen)  # nothing kept after the report
    rows = {v["name"]: v for v in res.json["variants"]}
    assert list(rows) == ["base", "m1", "half", "m2", "dragon"]  # the order given, whatever the pass
    assert rows["m1"]["kl_mean"] < rows["m2"]["kl_mean"] < rows["base"]["kl_mean"]
    assert rows["half"]["kl_mean"] > 0 and rows["dragon"]["kl_mean"] > rows["m2"]["kl_mean"]
    assert rows["m1"]["kl_max"] == pytest.approx(0, abs=1e-6)  # a float32 merge: the reference itself


def test_too_little_room_for_the_reference_logits_is_refused_before_the_first_pass(tmp_path, monkeypatch):
    """The reference's logits kept for the variants with a model of their own (positions x
    vocabulary values) must fit in the temporary folder: refused up front (exit 9, TMPDIR named in
    the hint), no traceback; a run without such variants keeps nothing and is not refused."""
    import shutil
    from collections import namedtuple

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "the little fox met a mouse at the lake"}) + "\n")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1000))
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--variant", "half=bf16")
    assert res.code == 9, res.stdout + res.stderr
    err = res.json["error"]
    assert "reference's logits" in err["message"] and "TMPDIR" in err["hint"]
    res = invoke("--json", "eval", EX / "tiny-base", "-a", EX / "upper-lora", "--data", data,
                 "--variant", f"dragon={EX / 'dragon-dora'}")
    assert res.code == 0, res.stdout + res.stderr
