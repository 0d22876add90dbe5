"""``generate --engine ray`` without Ray (the main virtualenv has none): option checks, the rows
that travel to the replicas and back, and completions put back in input order with what finished
kept when a run fails for good (the CLI's refusals: tests/cli/test_generate_ray.py). The run itself, against the real Ray and vLLM, is in
tests/interop/test_generate_ray.py."""

from __future__ import annotations

import json
import socket

import pytest

from adapterctl.core.generate.jobs import Job, split_runs
from adapterctl.core.generate.prompts import PromptSpec
from adapterctl.core.generate.results import Completion
from adapterctl.core.serve.ray_batch import (
    RayOptions,
    check_address,
    collect,
    decode_completion,
    decode_job,
    encode_completion,
    encode_job,
    worker_env,
)
from adapterctl.errors import EndpointError, InvalidAdapterError, UsageError

JOBS = [Job(PromptSpec(str(i), f"prompt {i}", "a" if i % 2 else None, 3 if i == 2 else None),
            "a" if i % 2 else None) for i in range(7)]


def completion(job: Job, ids=(1, 2)) -> Completion:
    return Completion(job.spec.id, job.spec.prompt, job.label, "text " + job.spec.id, tuple(ids),
                      "length", 4, 10.0, tuple(-0.5 for _ in ids))


def batch(ks: list[int], warnings=("w",), ready=1.0, finished=2.0) -> dict:
    """A replica's answer, shaped as Ray Data hands it over."""
    return {"k": ks, "completion": [encode_completion(completion(JOBS[k])) for k in ks],
            "warnings": [json.dumps(list(warnings))] * len(ks), "ready": [ready] * len(ks),
            "finished": [finished] * len(ks)}


def test_jobs_and_completions_survive_the_trip():
    for job in JOBS:
        assert decode_job(encode_job(job)) == job
    c = completion(JOBS[1])
    assert decode_completion(encode_completion(c)) == c
    no_lp = Completion("x", "p", None, "", (), "eos", 1, 0.0)
    assert decode_completion(encode_completion(no_lp)) == no_lp


def test_batches_in_any_order_come_back_in_input_order():
    seen = []
    got = collect([batch([4, 5, 6], ready=3.0, finished=9.0), batch([0, 1], ready=1.0, finished=4.0),
                   batch([2, 3], warnings=("w", "v"), finished=5.0)], JOBS, seen.append)
    assert [c.id for c in got.done if c] == [str(i) for i in range(7)]
    assert [c.id for c in seen] == ["4", "5", "6", "0", "1", "2", "3"]  # streamed as they came
    assert got.warnings == ["w", "v"] and got.error is None and not got.interrupted
    assert got.elapsed_s == 8.0  # first replica ready -> last completion
    results = split_runs(JOBS, got.done, mode="ray", seed=None, elapsed_s=got.elapsed_s)
    assert [c.id for c in results[0].completions] == [str(i) for i in range(7)]


def test_a_run_that_fails_for_good_keeps_what_finished():
    def batches():
        yield batch([0, 1])
        yield batch([5])
        raise RuntimeError("ActorDiedError: the actor died unexpectedly\n  worker exit code 17")

    got = collect(batches(), JOBS)
    assert [c.id for c in got.done if c] == ["0", "1", "5"]
    assert isinstance(got.error, EndpointError)
    assert "after 3 of 7 completion(s)" in str(got.error) and "worker exit code 17" in str(got.error)
    results = split_runs(JOBS, got.done, mode="ray", seed=None, elapsed_s=0, error=got.error)
    assert [c.id for c in results[0].completions] == ["0", "1", "5"] and results[0].error is got.error


def test_our_own_error_from_a_replica_keeps_its_exit_code():
    ours = InvalidAdapterError("adapter a: bad")

    class RayTaskError(Exception):
        cause = ours

    got = collect(iter_raise(RayTaskError("wrapped")), JOBS)
    assert got.error is ours


def iter_raise(err):
    yield from ()
    raise err


def test_ctrl_c_marks_the_rest_interrupted():
    def batches():
        yield batch([3])
        raise KeyboardInterrupt

    got = collect(batches(), JOBS)
    assert got.interrupted and got.error is None
    assert [c.finish_reason for c in got.done if c] == ["interrupted"] * 3 + ["length"] + ["interrupted"] * 3


@pytest.mark.parametrize("opts, words", [
    (RayOptions(replicas=0), "--replicas must be at least 1"),
    (RayOptions(batch_rows=0), "rows per batch"),
])
def test_options_are_checked(opts, words):
    with pytest.raises(UsageError, match=words):
        opts.check()


def test_rows_per_batch_spread_over_replicas():
    assert RayOptions().rows_per_batch(18) == 9
    assert RayOptions(replicas=4).rows_per_batch(18) == 3
    assert RayOptions(replicas=4).rows_per_batch(1) == 1
    assert RayOptions(batch_rows=5).rows_per_batch(18) == 5


def test_ray_address_checked_before_ray_joins():
    with pytest.raises(UsageError, match="not HOST:PORT"):
        check_address("nowhere")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match="nothing answers there"):
        check_address(f"ray://127.0.0.1:{port}", timeout=2)
    check_address("auto")  # left to Ray


def test_replicas_get_this_adapterctl_and_the_engine_settings(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    local = worker_env(local=True)
    assert local["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1" and "SECRET_TOKEN" not in local["env_vars"]
    from pathlib import Path

    import adapterctl
    root = str(Path(adapterctl.__file__).resolve().parents[1])
    assert local["env_vars"]["PYTHONPATH"].split(":")[0] == root
    remote = worker_env(local=False)
    assert remote["py_modules"] == [str(Path(root) / "adapterctl")] and "PYTHONPATH" not in remote["env_vars"]


def test_replica_gpus(monkeypatch):
    from adapterctl.core.generate.vllm_offline import VllmOptions
    from adapterctl.core.serve import ray_batch

    wide = RayOptions(vllm=VllmOptions(tensor_parallel_size=2, pipeline_parallel_size=2))
    monkeypatch.setattr(ray_batch, "has_gpu", lambda: True)
    assert wide.replica_gpus() == 4 and RayOptions().replica_gpus() == 1
    monkeypatch.setattr(ray_batch, "has_gpu", lambda: False)
    assert wide.replica_gpus() == 0 and RayOptions(gpus=0.5).replica_gpus() == 0.5
    with pytest.raises(UsageError, match="--tensor-parallel-size"):
        RayOptions(vllm=VllmOptions(tensor_parallel_size=0)).check()
