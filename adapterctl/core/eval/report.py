"""What ``eval`` reports (torch-free): per variant its figures and the gate's verdict; the base is
always a row (``"name": "base"``), the scale of how far the adapter moves the base."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gate:
    """``--max-kl`` (on kl_mean) and ``--min-top1``; None: not checked."""

    max_kl: float | None = None
    min_top1: float | None = None

    def failures(self, kl_mean: float, top1: float) -> list[str]:
        out = []
        if self.max_kl is not None and not kl_mean <= self.max_kl:
            out.append(f"kl_mean {kl_mean:.3g} > --max-kl {self.max_kl:g}")
        if self.min_top1 is not None and not top1 >= self.min_top1:
            out.append(f"top1_agreement {top1:.4f} < --min-top1 {self.min_top1:g}")
        return out


@dataclass(frozen=True)
class VariantResult:
    name: str
    kind: str  # "base", or a VariantSpec kind
    spec: str
    positions: int
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    perplexity: float
    passed: bool | None  # None: the base row, which no threshold applies to
    failures: tuple[str, ...] = ()
    #: how the KL was computed: "full" (whole vocabulary) or a labelled estimate
    kl_method: str = "full"
    #: --prompts: per prompt, the first generated token whose argmax differs from the reference's
    first_divergence: tuple[dict, ...] | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        doc["failures"] = list(self.failures)
        doc["notes"] = list(self.notes)
        if self.first_divergence is None:
            doc.pop("first_divergence")
        else:
            doc["first_divergence"] = list(self.first_divergence)
        return doc


@dataclass(frozen=True)
class EvalReport:
    base: str
    adapter: str
    dtype: str
    mode: str  # "data" (teacher-forced on --data) or "prompts" (on the reference's greedy text)
    sequences: int
    positions: int
    reference_perplexity: float
    variants: tuple[VariantResult, ...]
    gate: Gate = field(default_factory=Gate)
    completions: tuple[dict, ...] = ()  # --prompts: the reference's greedy continuations

    @property
    def failed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.passed is False]

    def to_dict(self) -> dict:
        doc = {
            "base": self.base,
            "adapter": self.adapter,
            "dtype": self.dtype,
            "mode": self.mode,
            "sequences": self.sequences,
            "positions": self.positions,
            "reference_perplexity": self.reference_perplexity,
            "max_kl": self.gate.max_kl,
            "min_top1": self.gate.min_top1,
            "passed": not self.failed,
            "variants": [v.to_dict() for v in self.variants],
        }
        if self.mode == "prompts":
            doc["completions"] = list(self.completions)
        return doc
