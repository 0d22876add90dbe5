"""llama.cpp (the tree vendored by llama-cpp-python 0.3.36, the build CI uses; see
``.ci/engines/llama_cpp.sh``): which PEFT LoRA adapters survive ``convert_lora_to_gguf.py`` and
``llama-adapter.cpp`` as trained.

The converter (``convert_lora_to_gguf.py``) writes one ``adapter.lora.alpha`` (the config's
``lora_alpha``) and, per module, ``lora_a``/``lora_b`` (``lora_embedding_A/B`` too); it skips
``.base_layer.weight`` copies, keeps norm weights, and stops on any other tensor ("Unexpected
name ...: Not a lora_A or lora_B tensor"). Module names go through the base architecture's
tensor map (``conversion/base.py`` ``map_tensor_name``: "Can not map tensor"). The loader
(``src/llama-adapter.cpp``) scales each module by ``alpha / rank`` with the rank of that
module's tensor (``llama_adapter_lora_weight::get_scale`` in ``src/llama-adapter.h``) and skips
norm vectors ("TODO: add support for norm vector").
"""

from __future__ import annotations

from adapterctl.core.adapter.base_info import is_embedding_name, is_lm_head_name
from adapterctl.core.engine_rules.facts import AdapterFacts
from adapterctl.core.engine_rules.rules import (
    Caps,
    CheckContext,
    Finding,
    Namer,
    Source,
    init_rule,
    scale_rule,
    tensor_fix,
    unmatched_rule,
    worst_fix,
)

VERSION = "pypi-0.3.36"
LLAMA_CPP = Namer("llama.cpp", VERSION)
CONVERTER = LLAMA_CPP.source("convert_lora_to_gguf.py")
MAPPER = LLAMA_CPP.source("conversion/base.py")
ADAPTER = LLAMA_CPP.source("src/llama-adapter.cpp")
ADAPTER_H = LLAMA_CPP.source("src/llama-adapter.h")

# Per-module rank is honoured (the scale uses each tensor's rank), one alpha for all.
CAPS = Caps(
    rank_pattern=True,
    dora=False,
    lora_bias=False,
    embedding_lora=True,
    lm_head_lora=True,
)


#: where convert can only drop what llama.cpp's LoRA loader cannot hold (full tensors, norms, a tied
#: lm_head's LoRA), the exact answer; not lora_bias: merge refuses it on a base layer without bias
MERGED_GGUF = "; a merged model keeps it exactly: adapterctl merge BASE ADAPTER --to gguf"
MERGE_KEEPS = ("full_tensors", "norms", "tied_lm_head")


def _finding(rule: str, verdict: str, message: str, source: Source, fix: str | None = None) -> Finding:
    """A finding, with the merged-GGUF alternative where convert can only drop what it names."""
    if rule in MERGE_KEEPS and fix == "drop":
        message += MERGED_GGUF
    return LLAMA_CPP.finding(rule, verdict, message, source, fix)


def _unexpected(name: str) -> str:
    return f"Unexpected name '{name}': Not a lora_A or lora_B tensor"


def _is_norm(key: str) -> bool:
    return "_layernorm" in key or ".norm" in key


def _dora(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    mods = [m for m in facts.modules if m.dora]
    if not mods:
        return []
    return [
        _finding(
            "dora",
            "refuses",
            _unexpected(f"base_model.model.{mods[0].path}.lora_magnitude_vector") + " (DoRA)",
            CONVERTER,
            "base",
        )
    ]


def _lora_bias(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    mods = [m for m in facts.modules if m.lora_bias]
    if not mods:
        return []
    return [
        _finding(
            "lora_bias",
            "refuses",
            _unexpected(f"base_model.model.{mods[0].path}.lora_B.bias")
            + f" (lora_bias on {len(mods)} modules)",
            CONVERTER,
            "drop",
        )
    ]


def _full_tensors(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    out = []
    full = [t for t in facts.full_tensors if t.role != "frozen_copy"]
    norms = [t for t in full if _is_norm(t.key)]
    others = [t for t in full if not _is_norm(t.key)]
    tokens = [f"base_model.model.{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
    if others or tokens:
        first = others[0].key if others else tokens[0]
        extra = (
            " Embeddings is present in the adapter. This can be due to new tokens added during fine tuning"
            if any(is_embedding_name(t.module) or is_lm_head_name(t.module) for t in others)
            else ""
        )
        fixes = [tensor_fix(t, CAPS, facts) for t in others] + ["base"] * len(tokens)
        out.append(
            _finding(
                "full_tensors",
                "refuses",
                _unexpected(first) + "." + extra + f" ({len(others) + len(tokens)} such tensors)",
                CONVERTER,
                worst_fix(fixes),
            )
        )
    if norms:
        out.append(
            _finding(
                "norms",
                "changes",
                f"{len(norms)} norm weights (e.g. {norms[0].key}) pass "
                'the converter but the loader skips them ("TODO: add support for norm '
                'vector")',
                ADAPTER,
                "drop",
            )
        )
    return out


def _tied_lm_head(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not (facts.base and facts.base.tie_word_embeddings):
        return []
    if not any(is_lm_head_name(m.path) for m in facts.modules):
        return []
    return [
        _finding(
            "tied_lm_head",
            "refuses",
            "lm_head is present in adapter, but is ignored in base "
            f"model ({facts.base_name} ties lm_head to the embeddings)",
            CONVERTER,
            "drop",
        )
    ]


ENGINE = LLAMA_CPP.engine(
    title="llama.cpp",
    caps=CAPS,
    rules=(
        scale_rule(
            LLAMA_CPP.name,
            ADAPTER_H,
            "scale alpha / rank per tensor: rsLoRA and alpha_pattern ignored",
            lambda facts, m: facts.config.lora_alpha / m.r,
            lambda facts: (
                ("rsLoRA scale ignored" if facts.config.use_rslora else "alpha_pattern ignored")
                + f" (llama.cpp scales each module by adapter.lora.alpha / rank = {facts.config.lora_alpha:g} / r)"
            ),
        ),
        LLAMA_CPP.rule("dora", CONVERTER, "lora_magnitude_vector: converter stops", _dora),
        LLAMA_CPP.rule("lora_bias", CONVERTER, "lora_B.bias: converter stops", _lora_bias),
        LLAMA_CPP.rule(
            "full_tensors",
            CONVERTER,
            "full tensors and token rows: converter stops; norms skipped by the loader",
            _full_tensors,
        ),
        LLAMA_CPP.rule(
            "tied_lm_head", CONVERTER, "lm_head LoRA on a tied-embedding base: converter stops", _tied_lm_head
        ),
        init_rule(LLAMA_CPP.name, CONVERTER, "convert_lora_to_gguf.py (which reads no init_lora_weights)"),
        unmatched_rule(
            LLAMA_CPP.name, MAPPER, "refuses", lambda missing: f"Can not map tensor '{missing[0]}.weight'"
        ),
    ),
)
