"""``merge --qlora nf4|fp4``: merge into the weights a QLoRA adapter was trained against.

An adapter trained on a base loaded in 4 bits (QLoRA: transformers' ``BitsAndBytesConfig(
load_in_4bit=True)``) learned its ΔW for ``dequant(quant(W))``, not for ``W`` (spec 6.4: merge
into what the adapter saw). With ``--qlora`` every weight transformers quantizes on such a load is
replaced by its 4-bit round trip (:mod:`adapterctl.io.checkpoint.fourbit`, bitsandbytes' blocks of 64,
absmaxes double-quantized with ``--qlora-double-quant``) before the deltas are added:
``W' = dequant(quant(W)) + ΔW``, in float32, rounded once to ``--dtype``.

Which weights: all of them that were 4-bit in training, not only the LoRA-targeted ones. The
adapter was trained through a model whose every quantized Linear computed with the round trip;
merging into the round trip of the targeted layers only would give a model that is neither the
base nor the trained one. transformers' own rule decides (``replace_with_bnb_linear``: every
``nn.Linear`` and GPT-2 ``Conv1D``, except ``get_keys_to_not_convert``'s output embedding, tied
weights and last parameter, and the class's ``_keep_in_fp32_modules``), read on a meta skeleton of
the model; Conv1D weights are quantized transposed, as transformers does before quantizing.

Without ``--qlora`` merge looks for signs that the adapter was trained on a 4-bit base (PEFT's
model card, the base it names) and warns; when the base *is* a bitsandbytes 4-bit checkpoint the
reader already dequantizes it (io/checkpoint/quantized.py), which is the faithful merge: ``rule`` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from adapterctl.core.lora.loaded import LoadedAdapter
from adapterctl.errors import AdapterctlError, UnsupportedError, UsageError
from adapterctl.io.checkpoint.fourbit import BLOCKSIZE, QUANT_TYPES, round_trip_4bit
from adapterctl.io.checkpoint.reader import meta_skeleton
from adapterctl.io.folders.files import read_json_object
from adapterctl.io.folders.model_dir import ModelFiles

#: PEFT's model card (PeftModel.create_or_update_model_card) lists the base's quantization
#: config under this line when the adapter was trained on a quantized model
CARD_PREFIX = "The following `bitsandbytes` quantization config was used during training:"
_CARD_LINE = re.compile(r"^\s*-\s*(\w+):\s*(.+?)\s*$")
#: axolotl's card quotes its YAML training config
_AXOLOTL = re.compile(r"^\s*(adapter:\s*qlora|load_in_4bit:\s*true)\s*$", re.IGNORECASE | re.MULTILINE)
#: Hub names of pre-quantized bitsandbytes 4-bit bases (unsloth/...-bnb-4bit and the like)
_NAME_4BIT = re.compile(r"(bnb|bitsandbytes)[-_.]?4[-_]?bit|[-_]4bit\b|\bnf4\b", re.IGNORECASE)


@dataclass(frozen=True)
class Evidence:
    """One sign that an adapter was trained on a 4-bit base."""

    source: str
    text: str
    quant_type: str | None = None
    double_quant: bool | None = None


@dataclass(frozen=True)
class QloraPlan:
    """What ``merge`` does about a 4-bit training base. ``rule``: ``flag`` (--qlora: the round
    trip of ``keys``), ``base-is-4bit`` (the base is stored in 4 bits and read dequantized),
    ``suggested`` (signs of a 4-bit training base, merged into the full-precision weights, with
    a warning) or ``none``."""

    rule: str = "none"
    quant_type: str | None = None
    double_quant: bool = False
    keys: frozenset[str] = frozenset()
    transposed: frozenset[str] = frozenset()  # Conv1D: stored (in, out), quantized as (out, in)
    tensors: int = 0
    evidence: tuple[Evidence, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "blocksize": BLOCKSIZE,
            "tensors": self.tensors,
            "evidence": [f"{e.source}: {e.text}" for e in self.evidence],
        }


def qlora_weight(plan: QloraPlan | None, key: str, W: torch.Tensor) -> torch.Tensor:
    """The base tensor ``key`` as the adapter saw it: its 4-bit round trip when planned."""
    if plan is None or key not in plan.keys or plan.quant_type is None:  # keys come with a quant_type
        return W
    if key in plan.transposed:
        return round_trip_4bit(W.T, plan.quant_type, plan.double_quant).T
    return round_trip_4bit(W, plan.quant_type, plan.double_quant)


# ----- what the adapter's files say -----------------------------------------------------------
def _card(ad: LoadedAdapter) -> str:
    try:
        return (ad.files.root / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _card_evidence(ad: LoadedAdapter) -> Evidence | None:
    """PEFT's card (before 0.21) lists the BitsAndBytesConfig fields under CARD_PREFIX."""
    text = _card(ad)
    if CARD_PREFIX not in text:
        return None
    fields = {}
    for line in text.split(CARD_PREFIX, 1)[1].splitlines()[1:]:
        m = _CARD_LINE.match(line)
        if not m:
            if fields:
                break
            continue
        fields[m.group(1).lstrip("_")] = m.group(2)
    if fields.get("load_in_4bit") != "True":
        return None
    qt = fields.get("bnb_4bit_quant_type")
    dq = fields.get("bnb_4bit_use_double_quant")
    return Evidence(
        ad.source,
        "README.md (PEFT's card): trained with load_in_4bit: True"
        + (f", bnb_4bit_quant_type: {qt}" if qt else "")
        + (f", bnb_4bit_use_double_quant: {dq}" if dq else ""),
        qt if qt in QUANT_TYPES else None,
        None if dq is None else dq == "True",
    )


def _axolotl_evidence(ad: LoadedAdapter) -> Evidence | None:
    """axolotl's card embeds its training config (YAML): ``adapter: qlora`` / ``load_in_4bit: true``."""
    if _AXOLOTL.search(_card(ad)):
        return Evidence(ad.source, "README.md (axolotl's config): adapter: qlora / load_in_4bit: true")
    return None


def _saved_config_evidence(ad: LoadedAdapter) -> Evidence | None:
    """A config.json saved beside the adapter (trainers such as axolotl save the base's) whose
    quantization_config says load_in_4bit."""
    path = ad.files.root / "config.json"
    try:
        config = read_json_object(path, "config.json") if path.is_file() else {}
    except AdapterctlError:  # a hint, not an input merge needs: an unreadable one says nothing
        config = {}
    q = config.get("quantization_config")
    if not isinstance(q, dict) or not q.get("load_in_4bit"):
        return None
    qt, dq = q.get("bnb_4bit_quant_type"), q.get("bnb_4bit_use_double_quant")
    return Evidence(
        ad.source,
        f"config.json beside the adapter: quantization_config load_in_4bit, "
        f"bnb_4bit_quant_type: {qt}, bnb_4bit_use_double_quant: {dq}",
        qt if qt in QUANT_TYPES else None,
        None if dq is None else bool(dq),
    )


def training_evidence(adapters: list[LoadedAdapter]) -> list[Evidence]:
    """Signs that the adapters were trained on a bitsandbytes 4-bit base. Neither
    adapter_config.json nor PEFT 0.21's card records it (its card code still has the
    quantization section, but tests ``hasattr`` on a dict, so never writes it); older PEFT cards,
    axolotl's, a saved base config and the base's name do."""
    out = []
    for ad in adapters:
        found = [e for e in (_card_evidence(ad), _axolotl_evidence(ad), _saved_config_evidence(ad)) if e]
        out += found
        name = ad.config.base_model_name_or_path
        if isinstance(name, str) and _NAME_4BIT.search(name):
            out.append(
                Evidence(ad.source, f"base_model_name_or_path {name!r} names a 4-bit bitsandbytes checkpoint")
            )
    return out


# ----- which checkpoint tensors transformers quantizes ----------------------------------------
def quantized_weights(config: dict, find) -> tuple[set[str], set[str]] | None:
    """(checkpoint keys, those stored as Conv1D) of every weight ``from_pretrained`` with a 4-bit
    BitsAndBytesConfig turns into ``Linear4bit``; ``find`` maps a parameter path to its checkpoint
    key. None when transformers cannot build the class (unknown or custom model type)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    try:
        model = meta_skeleton(config)
    except Exception:  # noqa: BLE001 - a config transformers cannot build: no skeleton
        model = None
    if model is None:
        return None
    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    keys, conv1d = set(), set()
    for name, module in model.named_modules():
        if not (type(module) is nn.Linear or isinstance(module, Conv1D)):
            continue
        if not should_convert_module(name, skip):
            continue
        key = find(f"{name}.weight")
        if key is not None:
            keys.add(key)
            if isinstance(module, Conv1D):
                conv1d.add(key)
    return keys, conv1d


# ----- the plan -------------------------------------------------------------------------------
def _check_options(quant_type: str | None, double_quant: bool) -> None:
    if quant_type is not None and quant_type not in QUANT_TYPES:
        raise UsageError(
            f"--qlora {quant_type!r}: not a bitsandbytes 4-bit type; use nf4 or fp4",
            hint="The type the adapter was trained with: bnb_4bit_quant_type in its "
            "training script (or in its README's quantization config).",
        )
    if double_quant and quant_type is None:
        raise UsageError("--qlora-double-quant needs --qlora nf4|fp4")


def _stored_4bit(files: ModelFiles, tasks) -> QloraPlan | None:
    q = files.config.get("quantization_config") or {}
    n4 = sum(1 for t in tasks if t.source.quant == "4bit")
    if not n4:
        return None
    return QloraPlan(
        "base-is-4bit", q.get("bnb_4bit_quant_type"), bool(q.get("bnb_4bit_use_double_quant")), tensors=n4
    )


def _suggestion(evidence: list[Evidence]) -> str:
    qt = next((e.quant_type for e in evidence if e.quant_type), None)
    dq = any(e.double_quant for e in evidence)
    flags = f"--qlora {qt or 'nf4|fp4'}" + (" --qlora-double-quant" if dq else "")
    return flags


def plan_qlora(
    files: ModelFiles, adapters: list[LoadedAdapter], quant_type: str | None, double_quant: bool, find, tasks
) -> QloraPlan:
    """Decide the rule (module docstring) and, with ``--qlora``, the tensors to round trip."""
    _check_options(quant_type, double_quant)
    evidence = tuple(training_evidence(adapters))
    if quant_type is not None and any(t.source.quant == "8bit" for t in tasks):
        raise UsageError(
            f"--qlora {quant_type}: the base is stored in 8 bits (LLM.int8), and is "
            "merged dequantized: those are the weights an adapter trained on it saw",
            hint="Drop --qlora; it is for adapters trained on a 4-bit base.",
        )
    stored = _stored_4bit(files, tasks)
    if stored is not None:  # the base is the 4-bit checkpoint: read dequantized, as trained
        if quant_type is not None and stored.quant_type not in (None, quant_type):
            raise UsageError(
                f"--qlora {quant_type}: the base is stored as {stored.quant_type} (its quantization_config)",
                hint="Drop --qlora: a 4-bit base is always merged into its "
                "dequantized weights, the ones the adapter saw.",
            )
        return QloraPlan(
            stored.rule, stored.quant_type, stored.double_quant, tensors=stored.tensors, evidence=evidence
        )
    if quant_type is None:
        if not evidence:
            return QloraPlan()
        flags = _suggestion(list(evidence))
        notes = tuple(
            f"{e.source}: trained on a 4-bit base ({e.text}): its deltas were learned for "
            "the 4-bit round trip of the base weights, not for these full-precision "
            f"ones; {flags} merges into the weights it saw"
            for e in evidence
        )
        return QloraPlan("suggested", evidence=evidence, warnings=notes)
    if any(ad.config.init_kind != "plain" or ad.config.kasa for ad in adapters):
        raise UnsupportedError(
            "--qlora with an adapter whose init mutates the base (PiSSA, OLoRA, "
            "KaSA, LoftQ...): PEFT quantizes the residual, not the base",
            hint="Convert the adapter to plain LoRA first (adapterctl convert).",
        )
    return _flagged(files, quant_type, double_quant, find, tasks, evidence)


def _flagged(
    files: ModelFiles, quant_type: str, double_quant: bool, find, tasks, evidence: tuple[Evidence, ...]
) -> QloraPlan:
    warnings = []
    for e in evidence:
        if e.quant_type and e.quant_type != quant_type:
            warnings.append(f"--qlora {quant_type}, but {e.source} says bnb_4bit_quant_type: {e.quant_type}")
        if e.double_quant is not None and e.double_quant != double_quant:
            warnings.append(
                f"{e.source} says bnb_4bit_use_double_quant: {e.double_quant}; "
                f"{'add' if e.double_quant else 'drop'} --qlora-double-quant to match"
            )
    found = quantized_weights(files.config, find)
    if found is None:  # no skeleton: the linear weights LoRA targets are what we know
        keys = {t.source.key for t in tasks if any(op.kind.matrix for op in t.loras)}
        conv1d = {t.source.key for t in tasks if any(op.kind.fan_in_fan_out for op in t.loras)}
        warnings.append(
            f"--qlora: transformers cannot build model type "
            f"{files.model_type!r}, so which weights it quantizes is unknown: only "
            f"the {len(keys)} LoRA-targeted linear weights are round-tripped"
        )
    else:
        keys, conv1d = found
    present = {t.source.key for t in tasks}
    keys &= present
    if not keys:
        warnings.append(
            f"--qlora: load_in_4bit quantizes none of this {files.model_type} model's "
            "weights (transformers replaces only exact nn.Linear and Conv1D layers), "
            "so the adapter saw the full-precision base: nothing to round-trip"
        )
    return QloraPlan(
        "flag",
        quant_type,
        double_quant,
        frozenset(keys),
        frozenset(conv1d & keys),
        len(keys),
        evidence,
        tuple(warnings),
    )
