"""Run one ``convert`` request: check the mode combination, chain the steps, write atomically.

Order: source (read an adapter, or extract one) -> mutated-init conversion -> rank reduction ->
serving conversion (``--for ENGINE``, for_engine.py) -> dtype cast (the single rounding) -> write.
So ``--pissa-init INIT --rank 8`` converts a PiSSA adapter (rank 2r) and brings it back to rank 8
in one run. With ``--for``, ``--rank``/``--energy`` set the rank of the DoRA -> LoRA SVD instead,
and ``--base`` is the base the DoRA weight and full-rank replacements are measured against (and
still recomputes a PiSSA/OLoRA init when the adapter has one). ``--for-serving`` is
``--for all --drop-unsupported``: what every engine serves, the rest dropped and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from adapterctl.core.adapter.config import BASE_MUTATING_INITS, parse_adapter_config
from adapterctl.errors import UnsupportedError, UsageError
from adapterctl.io.folders.output_dir import Input, check_output
from adapterctl.io.hub.ref import HubOptions


@dataclass(frozen=True)
class ConvertRequest:
    source: str  # local folder: TRAINED / ADAPTER, or FINETUNED with extract_base
    output: str
    force: bool = False
    init: str | None = None  # --pissa-init INIT (local folder)
    base: str | None = None  # --base BASE (local folder), mutated-init recomputation
    extract_base: str | None = None  # --extract BASE (local folder)
    rank: int | None = None
    energy: float | None = None
    dtype: str | None = None
    for_serving: bool = False
    to_safetensors: bool = False
    skip_unfactorable: bool = False
    source_name: str | None = None  # as the user typed them (Hub ids), for messages and cards
    base_name: str | None = None
    to: str | None = None  # --to gguf|mlx (core/convert/formats.py); --base is then the base model
    from_format: str | None = None  # --from gguf|mlx
    outtype: str = "f32"  # --outtype of --to gguf
    for_engine: tuple[str, ...] = ()  # --for ENGINE (repeatable; "all")
    drop_unsupported: bool = False
    keep: tuple[Input, ...] = ()  # other inputs of the command (serve: its other adapters, base)
    #: --for without --base: how the adapter's own base is fetched if a step needs it
    base_hub: HubOptions | None = None

    def inputs(self) -> list[Input]:
        """What the request reads (local paths once resolved): OUT may replace none of them."""
        if self.extract_base:
            source = Input.model(self.source, self.source_name, "source model (fine-tuned)")
        elif self.from_format == "gguf":
            source = Input(self.source, "source GGUF adapter", self.source_name)
        else:
            kind = "MLX adapter" if self.from_format == "mlx" else "adapter"
            source = Input.adapter(self.source, self.source_name, f"source {kind}")
        found = [source, *self.keep]
        if self.init:
            found.append(Input.adapter(self.init, None, "--pissa-init adapter"))
        if self.base:
            found.append(Input.model(self.base, self.base_name, "--base model"))
        if self.extract_base:
            found.append(Input.model(self.extract_base, self.base_name, "--extract base model"))
        return found

    @property
    def engines(self) -> tuple[str, ...]:
        """--for-serving is an alias of --for all --drop-unsupported (the strictest engine)."""
        return self.for_engine or (("all",) if self.for_serving else ())

    def for_engine_request(self, engines: tuple[str, ...] | None = None):
        """The ``convert --for`` step's request (core/convert/for_engine.py): ``engines``, else
        this request's."""
        from adapterctl.core.convert.engine_work import ForEngine

        return ForEngine(
            engines or self.engines,
            self.base,
            self.base_name,
            self.rank,
            self.energy,
            self.drop_unsupported or (self.for_serving and not self.for_engine),
            hub=self.base_hub,
        )


def check_request(req: ConvertRequest) -> None:
    """Usage errors for impossible or missing mode combinations (exit 2)."""
    formats = bool(req.to or req.from_format or req.outtype != "f32")
    if formats:
        from adapterctl.core.convert.formats import check_format_request

        check_format_request(req)
    primary = [
        f
        for f, v in (
            ("--pissa-init", req.init),
            ("--base", req.base and not formats),
            ("--extract", req.extract_base),
        )
        if v
    ]
    if len(primary) > 1:
        raise UsageError(
            f"{' and '.join(primary)} cannot be combined",
            hint="--pissa-init INIT or --base BASE convert a PiSSA/OLoRA adapter; "
            "--extract BASE builds an adapter from a fine-tuned model.",
        )
    if req.extract_base and req.rank is None:
        raise UsageError(
            "--extract needs --rank R",
            hint="e.g. convert --extract BASE FINETUNED "
            "OUT --rank 16 (add --energy 0.9 to lower ranks per module)",
        )
    if not req.extract_base and req.rank is not None and req.energy is not None:
        raise UsageError(
            "--rank and --energy cannot be combined for rank reduction",
            hint="--rank R gives every module rank R; --energy E picks each rank.",
        )
    if req.skip_unfactorable and not req.extract_base:
        raise UsageError(
            "--skip-unfactorable only applies to --extract",
            hint="Drop it, or extract: convert --extract BASE FINETUNED OUT --rank R.",
        )
    if req.drop_unsupported and not req.engines:
        raise UsageError(
            "--drop-unsupported only applies to --for ENGINE",
            hint="e.g. convert ADAPTER OUT --for vllm --drop-unsupported",
        )
    if req.engines:
        from adapterctl.core.engine_rules.check import engine_names

        engine_names(list(req.engines))  # unknown engine names are usage errors
        if req.extract_base:
            raise UsageError(
                "--for cannot be combined with --extract",
                hint="Extract first, then convert the extracted adapter --for ENGINE.",
            )
    if not (
        primary
        or req.rank is not None
        or req.energy is not None
        or req.dtype
        or req.for_serving
        or req.to_safetensors
        or req.engines
        or formats
    ):
        raise UsageError(
            "nothing to do: choose a conversion",
            hint="One of --pissa-init, --base, --rank/--energy, --extract, "
            "--to-safetensors, --dtype, --for ENGINE, --for-serving.",
        )


def run_convert(req: ConvertRequest, progress: Callable[[str, int, int], None] | None = None):
    """Execute ``req`` and return the ConvertResult of the written adapter."""
    from adapterctl.core.convert.cast import cast_draft
    from adapterctl.core.convert.draft import read_draft, write_draft

    check_request(req)
    check_output(req.output, req.inputs(), "OUT", is_file=req.to == "gguf")  # before any work
    if req.to or req.from_format:
        from adapterctl.core.convert.formats import run_format_convert

        return run_format_convert(req, _convert_steps, progress)
    if req.extract_base:
        from adapterctl.core.convert.extract import extract_adapter

        draft = extract_adapter(
            req.extract_base,
            req.source,
            req.rank,
            energy=req.energy,
            skip_unfactorable=req.skip_unfactorable,
            base_name=req.base_name,
            progress=progress,
        )
    else:
        draft = read_draft(req.source, req.source_name, req.engines, experts_ok=True)
        draft = _convert_steps(draft, req)
    if req.engines:
        from adapterctl.core.convert.for_engine import convert_for_engine

        draft = convert_for_engine(draft, req.for_engine_request())
    if req.dtype:
        draft = cast_draft(draft, req.dtype)
    elif req.to_safetensors and not draft.steps:
        draft = replace(draft, steps=("to-safetensors",))
    return write_draft(draft, req.output, req.force, inputs=req.inputs())


def _convert_steps(draft, req: ConvertRequest):
    from adapterctl.core.convert import mutated as M
    from adapterctl.core.convert.draft import read_draft

    if req.init:
        init = read_draft(req.init)
        draft = M.convert_mutated(draft, M.init_factors_from_adapter(init), init.source)
    elif req.base and (not req.engines or _init_kind(draft) in BASE_MUTATING_INITS):
        factors = M.init_factors_from_base(draft, req.base, req.base_name)
        draft = M.convert_mutated(draft, factors, req.base_name or req.base)
    if draft.config.get("target_parameters"):  # MoE expert LoRA: its own rank reduction
        return _expert_steps(draft, req)
    if (req.rank is not None or req.energy is not None) and not req.engines:
        from adapterctl.core.convert.rank_reduce import reduce_rank

        draft = reduce_rank(draft, req.rank, req.energy)
    return draft


def _expert_steps(draft, req: ConvertRequest):
    from adapterctl.core.convert.expert_ranks import reduce_expert_ranks

    if req.init or req.base:
        raise UnsupportedError(
            f"{draft.source}: target_parameters (MoE expert) LoRA with "
            "--pissa-init / --base: there is no mutated base to undo",
            hint="Drop the option; --rank/--energy reduce expert ranks.",
        )
    if req.rank is not None or req.energy is not None:
        draft = reduce_expert_ranks(draft, req.rank, req.energy)
    return draft


def _init_kind(draft) -> str:
    return parse_adapter_config(draft.config, draft.source).init_kind
