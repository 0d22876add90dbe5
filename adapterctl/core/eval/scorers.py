"""Who computes a variant's logits: our runtime on a model in this process (the reference, the base
row, another adapter on the same base, the adapter in another dtype, a merged model). Each scorer
turns a padded batch of token ids into logits; adapters on a shared base take turns on one model
(``set_active``), so an adapter variant costs no second copy of the base."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adapterctl.core.eval.specs import VariantSpec
from adapterctl.errors import AdapterctlError, IncompatibleBaseError

if TYPE_CHECKING:
    from adapterctl.core.runtime.model import LoadedBase


@dataclass
class Scorer:
    """``model`` in eval mode; ``active`` the adapters (name -> weight) to switch on before each
    forward, or None for a model that has none."""

    name: str
    model: Any  # a transformers model (LoadedBase.model); None where logits() is overridden
    active: dict[str, float] | None = None
    spec: VariantSpec | None = None
    notes: list[str] = field(default_factory=list)
    #: how the KL is computed from what the scorer gives: "full" or a labelled estimate
    kl_method: str = "full"

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from adapterctl.core.runtime.attach import set_active

        if self.active is not None:
            set_active(self.model, self.active)
        device = _device(self.model)
        return self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits

    def complete(self, ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The scored positions' logits, given the reference's: a scorer that knows only part of each
        distribution (an endpoint's top-k) fills in the rest here; others return them as they are."""
        return logits

    def close(self) -> None:
        """Release what the scorer holds once its pass is over (its model; a process elsewhere)."""
        self.model = None


def _device(model) -> torch.device:
    return next(p.device for p in model.parameters() if p.device.type != "meta")


@contextmanager
def about(name: str):
    """Errors raised while a variant is loaded or run name it (same class, same exit code)."""
    try:
        yield
    except AdapterctlError as err:
        if err.message.startswith(f"variant {name!r}"):
            raise
        raise type(err)(f"variant {name!r}: {err.message}", err.hint) from err


def check_vocab(name: str, tokenizer, vocab_size: int, other_tokenizer, other_vocab_size: int) -> None:
    """A variant scores the reference's tokens, so its vocabulary must be the reference's."""
    if other_vocab_size != vocab_size:
        raise IncompatibleBaseError(
            f"variant {name!r}: its vocabulary has {other_vocab_size} entries, the base's {vocab_size}",
            hint="Compare copies of the same model: a variant must use the base's tokenizer.",
        )
    if (
        tokenizer is not None
        and other_tokenizer is not None
        and tokenizer.get_vocab() != other_tokenizer.get_vocab()
    ):
        raise IncompatibleBaseError(
            f"variant {name!r}: its tokenizer differs from the base's (same size, other tokens)",
            hint="Compare copies of the same model: a variant must use the base's tokenizer.",
        )


def vocab_size(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def adapter_scorer(spec: VariantSpec, model, weight: float) -> Scorer:
    """Another adapter (a converted copy) attached to the reference's model under the variant's name."""
    from adapterctl.core.runtime.attach import attach_adapter

    with about(spec.name):
        attach_adapter(model, Path(spec.target), name=_slot(spec.name), activate=False)
    return Scorer(spec.name, model, {_slot(spec.name): weight}, spec)


def _slot(name: str) -> str:
    """The runtime's name for a variant's adapter (module names cannot hold '.')."""
    return "eval-" + name.replace(".", "_")


def model_scorer(
    spec: VariantSpec, dtype: str, load: Callable[[str, str], LoadedBase], tokenizer, size: int
) -> Scorer:
    """A merged model folder, loaded in the reference's dtype (its stored weights are what it costs)."""
    with about(spec.name):
        lb = load(spec.target, dtype)
        check_vocab(spec.name, tokenizer, size, lb.tokenizer, vocab_size(lb.model))
    return Scorer(spec.name, lb.model, None, spec)


def dtype_scorer(
    spec: VariantSpec,
    base_dir: Path,
    adapter_dir: Path,
    weight: float,
    load: Callable[[str, str], LoadedBase],
) -> Scorer:
    """The reference's adapter on the base loaded in another dtype."""
    from adapterctl.core.runtime.attach import attach_adapter

    with about(spec.name):
        lb = load(str(base_dir), spec.target)
        attach_adapter(lb.model, adapter_dir, name="eval-dtype", activate=False)
    return Scorer(spec.name, lb.model, {"eval-dtype": weight}, spec)
