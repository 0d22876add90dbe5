"""``generate --engine vllm`` and ``generate --endpoint URL``: which engine runs the prompts, and
the options that only make sense on one of them (refused elsewhere, with a usage error naming
them, before anything loads). The runs themselves are core calls
(:mod:`adapterctl.core.generate.vllm_offline`, :mod:`adapterctl.core.serve.endpoint`) returning
``generate``'s own report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from adapterctl.errors import UsageError

ENGINES = ("adapterctl", "vllm")
#: --dtype values vLLM takes as they are (vllm/config/model.py ModelDType)
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _refuse(given: dict, where: str, hint: str) -> None:
    bad = [flag for flag, value in given.items() if value not in (None, False)]
    if bad:
        raise UsageError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply {where}", hint=hint)


def engine_choice(
    engine: str,
    endpoint: str | None,
    *,
    vllm: dict,
    remote: dict,
    ours: dict,
    dtype: str | None,
    trust_remote_code: bool,
    hub,
    on_step,
) -> Callable | None:
    """None for our own engine; else a function ``(base_ref, choices, specs, cfg, **kw)`` that
    runs the prompts on vLLM or the endpoint and returns the report."""
    engine = (engine or "adapterctl").lower()
    if engine not in ENGINES:
        raise UsageError(
            f"--engine {engine!r}: not an engine generate runs on",
            hint="adapterctl (default) or vllm; for any other server use --endpoint URL.",
        )
    vllm_flags = {
        "--tensor-parallel-size": vllm["tensor_parallel_size"],
        "--pipeline-parallel-size": vllm["pipeline_parallel_size"],
        "--gpu-memory-utilization": vllm["gpu_memory_utilization"],
    }
    if engine != "vllm":
        _refuse(vllm_flags, "without --engine vllm", "They are vLLM's engine settings.")
    if endpoint is None:
        _refuse(
            {"--model": remote["model"]},
            "without --endpoint",
            "--model names the served base model of --endpoint URL.",
        )
        if engine == "adapterctl":
            return None
    if endpoint is not None and engine == "vllm":
        raise UsageError(
            "--endpoint and --engine vllm cannot be combined",
            hint="--endpoint runs on the server's own engine; --engine vllm starts vLLM in this process.",
        )
    where = "with --endpoint" if endpoint else "with --engine vllm"
    _refuse(ours, where, "They place or quantize the base for adapterctl's own engine.")
    if endpoint is not None:
        _refuse(
            {
                "--dtype": dtype if dtype not in (None, "auto") else None,
                "--trust-remote-code": trust_remote_code,
            },
            where,
            "The server loaded the model with its own settings.",
        )
        return functools.partial(_on_endpoint, endpoint, remote)
    if dtype not in (None, *VLLM_DTYPES):
        raise UsageError(f"--dtype {dtype} with --engine vllm: vLLM takes {', '.join(VLLM_DTYPES)}")
    return functools.partial(_on_vllm, vllm, dtype or "auto", trust_remote_code, hub, on_step)


def _on_vllm(
    vllm: dict, dtype: str, trust_remote_code: bool, hub, on_step, base_ref, choices, specs, cfg, **kw
):
    from adapterctl.core.generate.vllm_offline import VllmOptions, generate_on_vllm
    from adapterctl.core.serve.prepare import prepare_adapters

    opts = VllmOptions(
        vllm["tensor_parallel_size"] or 1,
        vllm["pipeline_parallel_size"] or 1,
        vllm["gpu_memory_utilization"],
        dtype,
        trust_remote_code,
    )
    prepare = functools.partial(prepare_adapters, "vllm")
    return generate_on_vllm(
        base_ref, choices, specs, cfg, opts=opts, prepare=prepare, hub=hub, on_step=on_step, **kw
    )


def _on_endpoint(url: str, remote: dict, base_ref, choices, specs, cfg, **kw):
    from adapterctl.core.serve.client import EndpointOptions
    from adapterctl.core.serve.endpoint import generate_on_endpoint

    opts = EndpointOptions(url, api_key=remote["api_key"], timeout=remote["timeout"])
    return generate_on_endpoint(
        opts, base_ref, remote["model"], choices, specs, cfg, concurrency=remote["concurrency"], **kw
    )
