"""Where ``generate`` runs its prompts: adapterctl's own engine in this process, vLLM's offline
engine (``--engine vllm``), vLLM replicas on Ray Data (``--engine ray``, vLLM's settings apply to
each replica) or an OpenAI-compatible server (``--endpoint URL``). One typed option
object per backend holds the flags that only make sense there; a flag given for another backend is
refused with a usage error naming it, before anything loads. The runs themselves are core calls
returning ``generate``'s own report.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from adapterctl.core.engine_rules.names import GENERATORS, engine_name
from adapterctl.errors import UsageError

#: --dtype values vLLM takes as they are (vllm/config/model.py ModelDType)
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _flag(name: str, default: Any = None) -> Any:
    """A field set from the command-line option ``name`` (named in refusals)."""
    return field(default=default, metadata={"flag": name})


def given_flags(options) -> list[str]:
    """The flags of ``options`` that were set (not None, not False)."""
    return [
        f.metadata["flag"]
        for f in fields(options)
        if "flag" in f.metadata and getattr(options, f.name) not in (None, False)
    ]


@dataclass(frozen=True)
class LocalEngine:
    """adapterctl's engine: where the base goes and how adapters are applied."""

    device_map: str | None = _flag("--device-map")
    max_memory: str | None = _flag("--max-memory")
    offload_folder: str | None = _flag("--offload-folder")
    quantize: str | None = _flag("--quantize")
    no_fold: bool = _flag("--no-fold", False)
    batch_size: int = 8


@dataclass(frozen=True)
class VllmEngine:
    """vLLM's offline engine in this process."""

    tensor_parallel_size: int | None = _flag("--tensor-parallel-size")
    pipeline_parallel_size: int | None = _flag("--pipeline-parallel-size")
    gpu_memory_utilization: float | None = _flag("--gpu-memory-utilization")


@dataclass(frozen=True)
class RayEngine:
    """vLLM replicas on Ray Data; ``vllm``: each replica's settings."""

    address: str | None = _flag("--ray-address")
    replicas: int | None = _flag("--replicas")
    stage: Path | None = _flag("--stage")
    vllm: VllmEngine = field(default_factory=VllmEngine)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server."""

    url: str | None = None
    model: str | None = _flag("--model")
    concurrency: int = 8
    timeout: float = 600.0
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Shared:
    """Options every backend takes, though not every backend takes every value."""

    dtype: str | None = None
    trust_remote_code: bool = False


def _refuse(flags: list[str], where: str, hint: str) -> None:
    if flags:
        raise UsageError(
            f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply {where}", hint=hint
        )


def pick_backend(
    engine: str, local: LocalEngine, vllm: VllmEngine, ray: RayEngine, endpoint: Endpoint, shared: Shared
) -> LocalEngine | VllmEngine | RayEngine | Endpoint:
    """The backend the flags name; the flags of the others must not be given."""
    engine = engine_name(
        engine,
        GENERATORS,
        "not an engine generate runs on",
        hint="adapterctl (default), vllm or ray; for any other server use --endpoint URL.",
    )
    if engine not in ("vllm", "ray"):
        _refuse(given_flags(vllm), "without --engine vllm or ray", "They are vLLM's engine settings.")
    if engine != "ray":
        _refuse(given_flags(ray), "without --engine ray", "They say where and how wide Ray runs.")
    if endpoint.url is None:
        _refuse(
            given_flags(endpoint),
            "without --endpoint",
            "--model names the served base model of --endpoint URL.",
        )
        if engine == "adapterctl":
            return local
    elif engine != "adapterctl":
        raise UsageError(
            f"--endpoint and --engine {engine} cannot be combined",
            hint=f"--endpoint runs on the server's own engine; --engine {engine} starts vLLM itself.",
        )
    where = "with --endpoint" if endpoint.url else f"with --engine {engine}"
    _refuse(given_flags(local), where, "They place or quantize the base for adapterctl's own engine.")
    if endpoint.url is not None:
        dtype = "--dtype" if shared.dtype not in (None, "auto") else None
        trc = "--trust-remote-code" if shared.trust_remote_code else None
        _refuse([f for f in (dtype, trc) if f], where, "The server loaded the model with its own settings.")
        return endpoint
    if shared.dtype not in (None, *VLLM_DTYPES):
        raise UsageError(f"--dtype {shared.dtype} {where}: vLLM takes {', '.join(VLLM_DTYPES)}")
    return vllm if engine == "vllm" else dataclasses.replace(ray, vllm=vllm)


def run_elsewhere(
    backend: VllmEngine | RayEngine | Endpoint,
    shared: Shared,
    hub,
    on_step: Callable[[str], None],
    base_ref,
    choices,
    specs,
    cfg,
    **kw,
):
    """Run the prompts on vLLM, on Ray or on the endpoint; ``generate``'s report."""
    if isinstance(backend, (VllmEngine, RayEngine)):
        from adapterctl.core.generate.vllm_offline import VllmOptions, generate_on_vllm
        from adapterctl.core.serve.prepare import prepare_adapters

        vllm = backend.vllm if isinstance(backend, RayEngine) else backend
        opts = VllmOptions(
            vllm.tensor_parallel_size or 1,
            vllm.pipeline_parallel_size or 1,
            vllm.gpu_memory_utilization,
            _concrete_dtype(shared.dtype, base_ref),
            shared.trust_remote_code,
        )
        if isinstance(backend, RayEngine):
            from adapterctl.core.serve.ray_batch import RayOptions, generate_on_ray

            replicas = 1 if backend.replicas is None else backend.replicas
            ray = RayOptions(backend.address, replicas, stage=backend.stage, vllm=opts)
            return generate_on_ray(base_ref, choices, specs, cfg, opts=ray, hub=hub, on_step=on_step, **kw)
        prepare = functools.partial(prepare_adapters, "vllm")
        return generate_on_vllm(
            base_ref, choices, specs, cfg, opts=opts, prepare=prepare, hub=hub, on_step=on_step, **kw
        )
    from adapterctl.core.serve.client import EndpointOptions
    from adapterctl.core.serve.endpoint import generate_on_endpoint

    assert backend.url is not None  # pick_backend returns the Endpoint only with --endpoint URL
    opts = EndpointOptions(backend.url, api_key=backend.api_key, timeout=backend.timeout)
    return generate_on_endpoint(
        opts, base_ref, backend.model, choices, specs, cfg, concurrency=backend.concurrency, **kw
    )


def _concrete_dtype(dtype: str | None, base_ref) -> str:
    """``auto`` as adapterctl's engine means it (the checkpoint's dtype), never vLLM's own ``auto``
    (half precision for a float32 checkpoint), where the base is a local folder; a Hub base
    keeps ``auto`` until it is resolved (issue 27)."""
    from pathlib import Path

    from adapterctl.io.dtypes import resolve_dtype
    from adapterctl.io.folders.files import read_json_object

    config = Path(str(base_ref or "")).expanduser() / "config.json"
    if dtype not in (None, "auto") or not base_ref or not config.is_file():
        return dtype or "auto"
    return resolve_dtype(dtype, read_json_object(config, "model config.json"))
