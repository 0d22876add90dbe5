"""``generate`` on another engine, as library calls that return the same
:class:`~adapterctl.core.generate.run.GenerateReport` as our own engine (the same JSON document):

- :func:`generate_on_vllm`: vLLM's offline engine in this process. The adapters are named by the
  one naming rule (:func:`adapterctl.core.runtime.session.adapter_names`), checked and converted
  for vLLM (:mod:`adapterctl.core.serve.prepare`), loaded as one ``LoRARequest`` each, with the
  LoRA limits computed from them;
- :func:`generate_on_endpoint`: an OpenAI-compatible server; adapters by their served names.

Both apply one adapter per request: a weighted combination is refused before anything starts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterctl.core.adapter.base_info import default_base
from adapterctl.core.generate.prompts import BASE_KEY, DEFAULT_KEY, PromptSpec, adapter_lookup
from adapterctl.core.generate.results import Completion, DecodingConfig
from adapterctl.core.generate.run import GenerateReport, prompt_adapters
from adapterctl.core.runtime.session import (
    AdapterChoice,
    AttachedAdapter,
    adapter_names,
    base_hub,
)
from adapterctl.core.serve.jobs import check_one_adapter_per_request
from adapterctl.errors import UsageError
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_adapter_dir, resolve_model_dir

OnComplete = Callable[[Completion], None]


def generate_on_vllm(
    base_ref: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    opts,
    compare: bool = False,
    chat: bool = False,
    system: str | None = None,
    hub: HubOptions | None = None,
    on_step: Callable[[str], None] | None = None,
    on_complete: OnComplete | None = None,
) -> GenerateReport:
    """``generate --engine vllm``. ``opts``: :class:`~adapterctl.core.serve.vllm_offline.VllmOptions`."""
    from adapterctl.core.serve.prepare import lora_limits, prepare_adapters
    from adapterctl.core.serve.vllm_offline import EngineAdapter, VllmEngine, import_vllm

    step = on_step or (lambda text: None)
    choices = list(choices)
    check_one_adapter_per_request([c.weight for c in choices], compare, "vLLM")
    opts.check()
    import_vllm()  # the missing-dependency error before any download or conversion
    refs = [c.ref for c in choices] + prompt_adapters(choices, specs)
    names = adapter_names(refs, [c.name for c in choices] + [None] * (len(refs) - len(choices)))
    dirs = [resolve_adapter_dir(r, hub) for r in refs]
    if base_ref is None:
        base_ref = default_base(dirs, refs)
    base_dir = resolve_model_dir(base_ref, base_hub(hub))
    chosen = names[: len(choices)]
    with tempfile.TemporaryDirectory(prefix="adapterctl-vllm-") as work:
        prepared = prepare_adapters(
            "vllm", list(zip(names, refs, dirs)), (base_dir, base_ref), Path(work), step
        )
        limits = lora_limits("vllm", prepared)
        step(
            f"starting vLLM on {base_ref} ({len(prepared)} adapter(s), max_lora_rank "
            f"{limits.max_lora_rank}, max_loras {limits.max_loras})"
        )
        engine = VllmEngine(
            str(base_dir),
            [EngineAdapter(p.name, p.source, p.path) for p in prepared],
            limits.max_lora_rank,
            limits.max_loras,
            opts,
            seed=cfg.seed,
        )
        results = engine.generate(
            specs,
            cfg,
            default=chosen[0] if chosen and not compare else None,
            compare=chosen if compare else None,
            lookup=adapter_lookup(zip(names, refs, dirs)),
            chat=chat,
            system=system,
            on_complete=on_complete,
        )
    adapters = tuple(AttachedAdapter(p.name, p.source, p.folder, 1.0, _notes(p)) for p in prepared)
    return GenerateReport(base_ref, adapters, tuple(results), compare, tuple(chosen))


def _notes(p) -> tuple[str, ...]:
    if not p.converted:
        return ()
    return (
        f"vLLM {p.verdict} it as it is: served as converted by convert --for vllm (exact)",
        *p.notes[:1],
    )  # the conversion's own first note (e.g. DoRA's error)


@dataclass(frozen=True)
class ServedRef:
    """An adapter as the server serves it: its served name, what was given, its path there."""

    name: str
    source: str
    path: str | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "weight": 1.0,
            "warnings": list(self.warnings),
        }


def generate_on_endpoint(
    opts,
    base_ref: str | None,
    model: str | None,
    choices: Sequence[AdapterChoice],
    specs: Sequence[PromptSpec],
    cfg: DecodingConfig,
    *,
    concurrency: int = 8,
    compare: bool = False,
    chat: bool = False,
    system: str | None = None,
    on_complete: OnComplete | None = None,
) -> GenerateReport:
    """``generate --endpoint``. ``opts``: :class:`~adapterctl.core.serve.client.EndpointOptions`."""
    from adapterctl.core.serve.client import Client
    from adapterctl.core.serve.endpoint import EndpointRun, list_models, resolve_names

    choices = list(choices)
    check_one_adapter_per_request([c.weight for c in choices], compare, "an endpoint")
    if concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    client = Client(opts)
    models = list_models(client)
    refs = list(
        dict.fromkeys(
            [c.ref for c in choices] + [s.adapter for s in specs if s.adapter not in (DEFAULT_KEY, BASE_KEY)]
        )
    )
    names = resolve_names(models, client.root, model, base_ref, refs)
    run = EndpointRun(client, names, concurrency, chat=chat, system=system)
    chosen = [c.ref for c in choices]
    results = run.generate(
        specs,
        cfg,
        default=chosen[0] if chosen and not compare else None,
        compare=chosen if compare else None,
        on_complete=on_complete,
    )
    roots = {m.id: m.root for m in models or []}
    served = {names.adapters[r]: r for r in refs}
    adapters = tuple(
        ServedRef(n, r, roots.get(n), tuple(filter(None, [names.notes.get(n)]))) for n, r in served.items()
    )
    return GenerateReport(
        names.base, adapters, tuple(results), compare, tuple(names.adapters[r] for r in chosen)
    )
