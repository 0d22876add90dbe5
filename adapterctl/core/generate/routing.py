"""Which adapter each generated row goes through, and how the engine applies it. The adapters
are loaded, named and attached by the one loader (:mod:`adapterctl.core.runtime.session`); this
module only routes rows.

* every row on one adapter (or one fixed weighted combination), unquantized base: the delta is
  folded into the weights for the run (``engine.fold`` / ``unfold``), so decoding costs what the
  base alone costs, when the run is long enough for folding to pay (:func:`fold_pays`);
  otherwise unmerged, through lean layers (``engine.packed.lean_wrappers``);
* every row on one adapter, quantized base (folding would re-round 4/8-bit weights): unmerged;
* rows on different adapters (JSONL ``adapter``, as LoRAX and S-LoRA batch them): one forward pass
  per step for the whole batch, each row through its own adapter's delta: stacked ranks for plain
  LoRA layers (:mod:`adapterctl.core.runtime.packed`), ``engine.row_adapters`` for the rest.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from typing import cast

import torch

from adapterctl.core.generate.prompts import BASE_KEY, PromptSpec, adapter_lookup, named_adapter
from adapterctl.core.runtime.layers import LoraWrapper, execution_device
from adapterctl.core.runtime.packed import PackedRows, bypass_wrappers, lean_wrappers
from adapterctl.core.runtime.session import AttachedAdapter
from adapterctl.errors import UsageError


def combination_label(weights: dict[str, float]) -> str:
    """``a`` for one adapter at weight 1, else ``a=0.5+b=0.5``: the ``adapter`` of a completion."""
    if len(weights) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(weights))
    return "+".join(f"{n}={w:g}" for n, w in weights.items())


class EngineRouter:
    """Routes rows through adapters attached with :mod:`adapterctl.core.runtime.attach`.

    ``default``: the command line's ``--adapter`` combination (name -> weight), used by prompts
    that name no adapter; empty means the base model alone. ``can_fold``: fold where exact;
    ``auto_fold``: only where the run is long enough to pay for it (:func:`fold_pays`)."""

    def __init__(
        self,
        model,
        adapters: list[AttachedAdapter],
        default: dict[str, float],
        can_fold: bool,
        auto_fold: bool = False,
    ) -> None:
        self.model, self.adapters, self.default = model, adapters, dict(default)
        self.can_fold, self.auto_fold = can_fold, auto_fold
        self.mode = "base"
        self._packed: PackedRows | None = None
        # every label a row key may carry -> its weights: each adapter alone at its --adapter
        # weight (what --compare runs), and the whole --adapter combination
        self._combos = {combination_label({a.name: a.weight}): {a.name: a.weight} for a in adapters}
        if default:
            self._combos[combination_label(default)] = dict(default)
        #: an attached adapter's name from its name, the reference the user typed, or its path
        self.lookup = adapter_lookup((a.name, a.source, a.folder) for a in adapters)

    def key_for(self, spec: PromptSpec) -> str:
        if spec.adapter is None:  # DEFAULT_KEY (None): the command line's adapters
            return combination_label(self.default) if self.default else BASE_KEY
        if spec.adapter == BASE_KEY:
            return BASE_KEY
        if spec.adapter in self._combos:  # a label this router made (``--compare`` variants)
            return spec.adapter
        return named_adapter(spec, self.lookup)

    def run(self, keys: list[str], steps: int | None = None) -> ContextManager:
        """Pick the mode for the whole run and hold it: fold one combination (or not, for a run
        of fewer than ``steps`` decode steps than folding costs), or get ready for per-row
        adapters."""
        distinct = set(keys)
        if len(distinct) > 1:
            return self._run_mixed(distinct)
        key = next(iter(distinct), BASE_KEY)
        return self._run_single(key, steps)

    def batch(self, keys: list[str]) -> ContextManager:
        if self.mode != "mixed":
            return contextlib.nullcontext()
        from adapterctl.core.runtime import attach as engine

        assert self._packed is not None, "mode 'mixed' is set with its packed layers"
        self._packed.set_rows(keys)
        return engine.row_adapters(self.model, keys)  # the layers left unpacked

    @contextlib.contextmanager
    def _run_single(self, key: str, steps: int | None = None):
        from adapterctl.core.runtime import attach as engine

        weights = {} if key == BASE_KEY else self._combos.get(key, {key: 1.0})
        engine.set_active(self.model, weights)
        if not weights:
            self.mode = "base"
            with bypass_wrappers(self.model, folded_only=False):
                yield
            return
        fold = self.can_fold and (not self.auto_fold or fold_pays(self.model, steps))
        if not fold or not _try_fold(self.model):
            self.mode = "unmerged"
            with lean_wrappers(self.model):
                yield
            return
        self.mode = "folded"
        try:
            with bypass_wrappers(self.model):
                yield
        finally:  # exact restore, also on Ctrl-C: the model object may be used again
            engine.unfold(self.model)

    @contextlib.contextmanager
    def _run_mixed(self, keys: set[str]):
        names = {a.name for a in self.adapters}
        combos = sorted(k for k in keys if k != BASE_KEY and k not in names)
        if combos:  # the engine's per-row path applies one whole adapter per row
            raise UsageError(
                f"the weighted combination {combos[0]} cannot share a batch with prompts that "
                "name other adapters",
                hint="Give each JSONL prompt its own 'adapter' (rows use "
                "one adapter at weight 1), or run the combination separately.",
            )
        self.mode = "mixed"
        packed = PackedRows(self.model, sorted(k for k in keys if k != BASE_KEY))
        with packed.installed():
            self._packed = packed
            try:
                yield
            finally:
                self._packed = None

    def label_alone(self, name: str) -> str:
        """The row key of one adapter alone at its attach weight (a ``--compare`` variant)."""
        weight = next((a.weight for a in self.adapters if a.name == name), 1.0)
        return combination_label({name: weight})


#: Folding against running unmerged, on CPU: seconds to fold one weight element per LoRA rank,
#: over seconds one unmerged LoRA layer adds to a decode step. Measured side by side
#: (benchmarks/generate.py's 0.2B bf16 Llama, r=16 all-linear, batch 8, one thread): folding
#: cost 1.3e-10 s per element and rank, an unmerged layer 78 us per step; the ratio holds on a
#: loaded and a quiet machine alike, the two timings moving together. Break-even there: ~44 steps.
FOLD_COST_RATIO = 1.7e-6


def fold_pays(model, steps: int | None) -> bool:
    """Whether folding the active adapters costs less than ``steps`` unmerged decode steps would
    add. From shapes alone, never timings, so a run's mode (and so its exact numbers) does not
    depend on how busy the machine is. Off the CPU a fold is a few fast matmuls: always fold."""
    if steps is None:
        return True
    work, layers = 0, 0
    for mod in model.modules():
        if not isinstance(mod, LoraWrapper):
            continue
        ranks = sum(mod.slot(n).r for n in mod.active if n in mod.lora)
        if not ranks:
            continue
        if execution_device(mod.base_layer).type != "cpu":
            return True
        work += ranks * cast(torch.Tensor, mod.base_layer.weight).numel()
        layers += 1
    return work * FOLD_COST_RATIO <= steps * layers


def _try_fold(model) -> bool:
    """Fold the active adapters; False (and nothing folded) where some layer cannot be folded
    (lora_bias on a layer without a bias, an offloaded layer): the unmerged forward is exact."""
    from adapterctl.core.runtime import attach as engine
    from adapterctl.errors import UnsupportedError

    try:
        engine.fold(model)
    except UnsupportedError:
        engine.unfold(model)
        return False
    return True
