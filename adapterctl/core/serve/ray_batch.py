"""``generate --engine ray``: the same prompts through vLLM replicas on Ray Data, results in
``generate``'s schema.

The established way to run a large batch over many adapters is Ray Data with vLLM (Ray's "batch
inference with LoRA adapters"), each row naming its adapter, like our prompts JSONL. Ray Data's
own LLM processor (``ray.data.llm.build_processor``) drives vLLM's async engine with its own
tokenization and placement groups; this module uses Ray Data ``map_batches`` with actors instead,
each one holding the engine ``generate --engine vllm`` drives
(:class:`~adapterctl.core.generate.vllm_offline.VllmEngine`), so both engines see the same token
ids, the same sampling parameters and the same adapters:

1. adapters are resolved, checked and converted where exact for vLLM
   (:func:`~adapterctl.core.serve.prepare.prepare_adapters`), then staged (``deploy``'s
   :func:`~adapterctl.core.serve.deploy.stage_adapter`) in a folder every node reads (``stage``:
   a temporary folder by default, removed after the run);
2. prompts are planned into jobs here (:meth:`EngineRun.plan`), one row each, numbered;
3. Ray is started for the run (or joined at ``address``) and a pool of ``replicas`` actors runs
   the rows in batches; a replica whose process dies is restarted and its batch retried (Ray's
   ``max_restarts`` / ``max_task_retries``, :data:`RETRIES` times); an exception raised by vLLM
   itself is not retried (it would be raised again);
4. completions come back as batches finish and are put back in input order; a run that fails for
   good keeps what finished and carries the error (as ``--endpoint`` does).

The result's ``elapsed_s`` runs from the first replica ready to the last completion (what
``--engine vllm`` reports, which starts its clock once its engine is up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.core.engine_rules.limits import lora_limits
from adapterctl.core.generate.engine_run import EngineRun, engine_report, resolve_engine_run
from adapterctl.core.generate.jobs import Job, interrupted_completion, split_runs
from adapterctl.core.generate.prompts import PromptSpec
from adapterctl.core.generate.results import Completion, DecodingConfig
from adapterctl.core.generate.vllm_offline import EngineAdapter, VllmOptions, has_gpu, import_vllm
from adapterctl.core.runtime.session import AdapterChoice
from adapterctl.errors import AdapterctlError, EndpointError, Interrupted, MissingDependencyError, UsageError
from adapterctl.io.hub.ref import HubOptions

if TYPE_CHECKING:
    from adapterctl.core.generate.run import GenerateReport

MODE = "ray"
#: how often a replica whose process died is restarted, and its batch retried
RETRIES = 2
#: environment variables the replicas get from this process (vLLM's CPU settings, threads, Hub)
FORWARDED_ENV = ("VLLM_", "OMP_", "HF_", "TOKENIZERS_", "ADAPTERCTL_RAY_")
#: fault injection for tests: the path of a file; the first replica batch that finds it missing
#: creates it and kills its own process (a replica lost mid-run, as an out-of-memory kill does)
FAULT_ONCE = "ADAPTERCTL_RAY_FAULT_ONCE"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` None starts a local Ray for the run (stopped after);
    ``replicas`` vLLM engines, each with ``vllm``'s settings (tensor/pipeline parallel per
    replica), ``cpus`` Ray CPUs and ``gpus`` Ray GPUs (None: tensor x pipeline parallel size
    where this machine has a GPU, else none); ``stage`` a folder every node reads (None: a
    temporary one)."""

    address: str | None = None
    replicas: int = 1
    cpus: float = 1.0
    gpus: float | None = None
    stage: Path | None = None
    vllm: VllmOptions = field(default_factory=VllmOptions)
    batch_rows: int | None = None  # rows per Ray Data batch (None: about two batches per replica)

    def check(self) -> None:
        if self.replicas < 1:
            raise UsageError(f"--replicas must be at least 1, got {self.replicas}")
        if self.address is not None:
            check_address(self.address)  # before anything is downloaded, converted or staged
        if self.batch_rows is not None and self.batch_rows < 1:
            raise UsageError(f"rows per batch must be at least 1, got {self.batch_rows}")
        self.vllm.check()

    def replica_gpus(self) -> float:
        if self.gpus is not None:
            return self.gpus
        return self.vllm.tensor_parallel_size * self.vllm.pipeline_parallel_size if has_gpu() else 0

    def rows_per_batch(self, n: int) -> int:
        return self.batch_rows or max(1, math.ceil(n / (2 * self.replicas)))


def import_ray():
    """Ray Data, or a missing-dependency error saying where to install it."""
    try:
        import ray  # pyright: ignore[reportMissingImports]
        import ray.data  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError as err:
        raise MissingDependencyError(
            f"--engine ray needs Ray Data, which this python ({sys.executable}) cannot import "
            f"({err.msg}); install `ray[data]` next to vLLM",
            hint="In vLLM's virtualenv: `pip install 'ray[data]'`, then run its adapterctl "
            "(`vllm-env/bin/adapterctl generate --engine ray ...`).",
        ) from err
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that answers, before Ray's own retries (a minute
    and more) start; ``auto`` (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"--ray-address {address!r} is not HOST:PORT",
            hint="The head node's GCS address (HOST:6379), ray://HOST:10001, or auto.",
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise EndpointError(
            f"--ray-address {address}: nothing answers there ({err})",
            hint="Start the cluster (`ray start --head`) or leave --ray-address out: a local Ray "
            "is then started for the run.",
        ) from err


def worker_env(local: bool) -> dict:
    """What the replicas need from here: the forwarded settings, and (on a Ray started here)
    this adapterctl on their path; a cluster gets the package itself (``py_modules``)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    package = Path(__file__).resolve().parents[2]
    runtime: dict = {"env_vars": env}
    if local:
        paths = [str(package.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    else:
        runtime["py_modules"] = [str(package)]
    return runtime


@contextlib.contextmanager
def ray_session(ray, opts: RayOptions, step: Callable[[str], None]) -> Iterator[None]:
    """Ray for the run: joined at ``opts.address``, else started here (small: ``replicas`` x
    ``cpus`` CPUs and one for Ray Data's own tasks, no dashboard) and stopped after."""
    with _messages_on_stderr():
        with _joined(ray, opts, step):
            yield


@contextlib.contextmanager
def _messages_on_stderr() -> Iterator[None]:
    """Ray's driver prints the cluster's messages (a task retried, an actor died) on stdout
    (``ray/_private/worker.py``: ``listen_error_messages`` -> ``print_to_stdstream`` with
    ``is_err`` False, 2.60), where ``--json``/``--jsonl`` put their documents: for the run they go
    to stderr. The replicas' own logs stay in Ray's session folder (``log_to_driver`` off)."""
    from ray._private import worker  # pyright: ignore[reportMissingImports]

    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return
    worker.print_to_stdstream = lambda data, ignore_prefix: original({**data, "is_err": True}, ignore_prefix)
    try:
        yield
    finally:
        worker.print_to_stdstream = original


@contextlib.contextmanager
def _joined(ray, opts: RayOptions, step: Callable[[str], None]) -> Iterator[None]:
    # Ray's and Ray Data's progress logs at warnings: the steps are ours to say
    kw: dict = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": worker_env(opts.address is None),
    }
    if opts.address is not None:  # check_address ran in opts.check()
        step(f"joining Ray at {opts.address}")
        try:
            ray.init(address=opts.address, **kw)
        except (ConnectionError, RuntimeError) as err:
            raise EndpointError(
                f"--ray-address {opts.address}: Ray could not join it ({err})",
                hint="Check the address (`ray status` on the head node) and that its Ray version "
                "is this one's.",
            ) from err
    else:
        cpus = math.ceil(opts.replicas * opts.cpus) + 1
        step(f"starting a local Ray ({cpus} CPUs)")
        try:  # address="local": a new Ray even where RAY_ADDRESS names a cluster (--ray-address joins one)
            ray.init(
                address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=256 << 20, **kw
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise EndpointError(
                f"a local Ray could not start ({err})",
                hint="Is another Ray running in this process's session? Or join one with --ray-address.",
            ) from err
    try:
        yield
    finally:
        ray.shutdown()


# ----- what travels between the driver and the replicas -----------------------------------------
def encode_job(job: Job) -> str:
    return json.dumps({"spec": dataclasses.asdict(job.spec), "label": job.label, "variant": job.variant})


def decode_job(text: str) -> Job:
    doc = json.loads(text)
    return Job(PromptSpec(**doc["spec"]), doc["label"], doc["variant"])


def encode_completion(c: Completion) -> str:
    return json.dumps(dataclasses.asdict(c))


def decode_completion(text: str) -> Completion:
    doc = json.loads(text)
    for key in ("completion_token_ids", "logprobs"):
        if doc[key] is not None:
            doc[key] = tuple(doc[key])
    return Completion(**doc)


class Replica:
    """A Ray Data actor: one vLLM engine with the run's adapters, running batches of job rows
    (``k``: the row's number, ``job``: :func:`encode_job`) into completion rows."""

    def __init__(self, base: str, adapters: list, limits: tuple[int, int], opts: VllmOptions, run: dict):
        from adapterctl.core.generate.vllm_offline import VllmEngine

        self.cfg = DecodingConfig(**{**run["cfg"], "stop": tuple(run["cfg"]["stop"])})
        self.chat, self.system = run["chat"], run["system"]
        self.engine = VllmEngine(
            base, [EngineAdapter(*a) for a in adapters], *limits, opts, seed=self.cfg.seed
        )
        self.ready = time.time()

    def __call__(self, batch: dict) -> dict:
        _inject_fault()
        jobs = [decode_job(str(s)) for s in batch["job"]]
        done, _, warnings = self.engine.run_jobs(jobs, self.cfg, chat=self.chat, system=self.system)
        n = len(jobs)
        return {
            "k": [int(k) for k in batch["k"]],
            "completion": [encode_completion(c) if c is not None else "" for c in done],
            "warnings": [json.dumps(warnings)] * n,
            "ready": [self.ready] * n,
            "finished": [time.time()] * n,
        }


def _inject_fault() -> None:
    marker = os.environ.get(FAULT_ONCE)
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(17)  # the process dies as an out-of-memory kill leaves it: no exception, no cleanup


# ----- the run -------------------------------------------------------------------------------------
@dataclass
class Collected:
    """Completions by row number as they came back, with what the replicas said."""

    done: list[Completion | None]
    warnings: list[str] = field(default_factory=list)
    first_ready: float | None = None
    last_finished: float | None = None
    interrupted: bool = False
    error: AdapterctlError | None = None

    @property
    def elapsed_s(self) -> float:
        if self.first_ready is None or self.last_finished is None:
            return 0.0
        return max(0.0, self.last_finished - self.first_ready)


def collect(
    batches: Iterable[dict], jobs: Sequence[Job], on_complete: Callable[[Completion], None] | None = None
) -> Collected:
    """Completion batches (in any order) put back in job order; Ctrl-C or a run that fails for
    good keeps what came back before it (the rest: interrupted, or left out with the error)."""
    got = Collected([None] * len(jobs))
    try:
        for batch in batches:
            _take(got, batch, on_complete)
    except KeyboardInterrupt:
        got.interrupted = True
        got.done = [c or interrupted_completion(j) for c, j in zip(got.done, jobs)]
    except Exception as err:  # noqa: BLE001 - Ray's and vLLM's failures, in their own words
        got.error = run_error(err, sum(c is not None for c in got.done), len(jobs))
    return got


def _take(got: Collected, batch: dict, on_complete) -> None:
    for k, text, said, ready, finished in zip(
        batch["k"], batch["completion"], batch["warnings"], batch["ready"], batch["finished"]
    ):
        c = decode_completion(str(text))
        got.done[int(k)] = c
        got.warnings.extend(w for w in json.loads(str(said)) if w not in got.warnings)
        got.first_ready = min(float(ready), got.first_ready or float(ready))
        got.last_finished = max(float(finished), got.last_finished or 0.0)
        if on_complete is not None:
            on_complete(c)


def run_error(err: BaseException, finished: int, total: int) -> AdapterctlError:
    """Our own error where a replica raised one (an adapter vLLM refused: its exit code), else
    the Ray failure, saying how much finished."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, AdapterctlError) and not isinstance(cause, Interrupted):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1][:500] if lines else type(err).__name__
    return EndpointError(
        f"the Ray run failed for good after {finished} of {total} completion(s): "
        f"{type(err).__name__}: {last}",
        hint=f"What finished is in the results. Replicas that died were restarted {RETRIES} "
        "times; the replicas' logs are in Ray's session folder (/tmp/ray/session_latest/logs).",
    )


def run_on_ray(ray, jobs: Sequence[Job], replica: dict, opts: RayOptions, on_complete) -> Collected:
    """The jobs through a pool of ``opts.replicas`` :class:`Replica` actors."""
    from ray.data import ActorPoolStrategy  # pyright: ignore[reportMissingImports]

    rows = opts.rows_per_batch(len(jobs))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # rows are reported as they come back (--jsonl), not blocks
    # Ray Data's execution plan and timings at INFO, and a warning that its bars are off: its
    # failures come back as exceptions, which say more
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ds = ray.data.from_items(
        [{"k": k, "job": encode_job(j)} for k, j in enumerate(jobs)],
        override_num_blocks=max(1, math.ceil(len(jobs) / rows)),
    )
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for the actors' restarts yet (dataset.py,
        # map_batches_internal); left out, Ray Data restarts a dead replica forever (-1)
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            Replica,
            fn_constructor_kwargs=replica,
            batch_size=rows,
            compute=ActorPoolStrategy(size=opts.replicas),
            num_cpus=opts.cpus,
            num_gpus=opts.replica_gpus(),
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
    return collect(ds.iter_batches(batch_size=None, batch_format="default"), jobs, on_complete)


def generate_on_ray(
    base_ref: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    opts: RayOptions,
    compare: bool = False,
    chat: bool = False,
    system: str | None = None,
    hub: HubOptions | None = None,
    on_step: Callable[[str], None] | None = None,
    on_complete: Callable[[Completion], None] | None = None,
) -> GenerateReport:
    """``generate --engine ray``: ``generate --engine vllm``'s run on Ray Data replicas."""
    from adapterctl.core.serve.deploy import stage_adapter
    from adapterctl.core.serve.prepare import prepare_adapters

    step = on_step or (lambda text: None)
    opts.check()
    ray = import_ray()  # before any download or conversion
    # a Ray started here runs its replicas with this python: vLLM must be importable here too
    need = import_vllm if opts.address is None else (lambda: None)
    run = resolve_engine_run(base_ref, choices, specs, compare=compare, hub=hub, engine="Ray", require=need)
    jobs = run.plan(specs, compare)
    with _stage_dir(opts.stage) as stage:
        base = (run.base_dir, run.base_ref)
        prepared = prepare_adapters("vllm", run.adapters, base, stage, step)
        staged = [stage_adapter(p, "vllm", base, stage, step) for p in prepared]
        limits = lora_limits("vllm", prepared)
        replica = _replica_args(run, prepared, staged, (limits.max_lora_rank, limits.max_loras), opts, cfg)
        replica["run"].update(chat=chat, system=system)
        with ray_session(ray, opts, step):
            step(
                f"running {len(jobs)} prompt(s) on {opts.replicas} vLLM replica(s) of {run.base_ref} "
                f"({len(prepared)} adapter(s), max_lora_rank {limits.max_lora_rank})"
            )
            got = run_on_ray(ray, jobs, replica, opts, on_complete)
    results = split_runs(
        jobs,
        got.done,
        mode=MODE,
        seed=cfg.seed,
        elapsed_s=got.elapsed_s,
        interrupted=got.interrupted,
        error=got.error,
        warnings=got.warnings,
    )
    return engine_report(run, prepared, results, compare)


def _replica_args(run: EngineRun, prepared, staged, limits, opts: RayOptions, cfg: DecodingConfig) -> dict:
    adapters = [(p.name, p.source, str(path)) for p, path in zip(prepared, staged)]
    return {
        "base": str(Path(run.base_dir).resolve()),
        "adapters": adapters,
        "limits": limits,
        "opts": opts.vllm,
        "run": {"cfg": dataclasses.asdict(cfg)},
    }


@contextlib.contextmanager
def _stage_dir(stage: Path | None) -> Iterator[Path]:
    if stage is not None:
        stage.mkdir(parents=True, exist_ok=True)
        yield stage
        return
    with tempfile.TemporaryDirectory(prefix="adapterctl-ray-") as tmp:
        yield Path(tmp)
