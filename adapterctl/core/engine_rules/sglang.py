"""SGLang 0.5.23 (the release on PyPI when this was written): which PEFT LoRA adapters it serves
as trained. Read from ``sglang/srt/lora/``: ``lora_config.py`` (what is read from
adapter_config.json: target_modules, r, lora_alpha, use_dora; nothing else), ``lora.py``
(``LoRAAdapter``: one ``scaling = lora_alpha / r`` for every module, tensors grouped by layer
index), ``lora_manager.py`` (``validate_new_adapter``, ``init_lora_shapes``) and
``mem_pool.py`` (copies each tensor into a buffer slice of the config's rank ``r``; weights whose
name matches no target module are skipped with a warning).

SGLang cannot run on this machine (it needs a GPU), so these rules are covered by rule tests
with the sources cited, not by an interop test.
"""

from __future__ import annotations

from adapterctl.core.adapter.base_info import module_name
from adapterctl.core.engine_rules.facts import AdapterFacts, layer_of
from adapterctl.core.engine_rules.rules import (
    Caps,
    CheckContext,
    Engine,
    Finding,
    Rule,
    Source,
    describe_scales,
    per_layer,
    residual_fix,
    scale_changes,
    tensor_fix,
    worst_fix,
)

VERSION = "0.5.23"
LORA_CONFIG = Source("sglang", VERSION, "python/sglang/srt/lora/lora_config.py")
LORA = Source("sglang", VERSION, "python/sglang/srt/lora/lora.py")
MANAGER = Source("sglang", VERSION, "python/sglang/srt/lora/lora_manager.py")
MEM_POOL = Source("sglang", VERSION, "python/sglang/srt/lora/mem_pool.py")

CAPS = Caps(
    rslora=False,
    alpha_pattern=False,
    rank_pattern=False,
    dora=False,
    lora_bias=False,
    embedding_lora=True,
    lm_head_lora=True,
    list_targets=True,
)


def _f(rule: str, verdict: str, message: str, source: Source, fix: str | None = None) -> Finding:
    return Finding(f"sglang.{rule}", verdict, message, source, fix)


def _dora(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not facts.config.use_dora:
        return []
    return [
        _f(
            "dora",
            "refuses",
            "Failed to load the adapter because LoRA serving currently doesn't support DoRA adapters",
            MANAGER,
            "base",
        )
    ]


def _added_tokens(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    vocab = facts.base.vocab_size if facts.base else None
    ids = [i for i in facts.added_token_ids if vocab is None or i >= vocab]
    if not ids:
        return []
    return [
        _f(
            "added_tokens",
            "refuses",
            "Failed to load the adapter because LoRA serving "
            "currently doesn't support adapters that add tokens to the vocabulary "
            f"(added_tokens.json: {len(ids)} tokens"
            + (f" at or above the base vocabulary of {vocab})" if vocab else ")"),
            MANAGER,
        )
    ]


def _targets(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    tm = facts.config.target_modules
    if not isinstance(tm, str) or tm in ("all-linear", "all"):
        return []
    return [
        _f(
            "target_modules",
            "refuses",
            f"SGLang does not recognize target_modules='{tm}'. "
            "Please use a list of module name suffixes in the adapter's PEFT config, or "
            "explicitly specify --lora-target-modules during server startup.",
            MANAGER,
            "convert",
        )
    ]


def _scaling(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    cfg = facts.config
    changed = scale_changes(facts, lambda m: cfg.lora_alpha / cfg.r)
    if not changed:
        return []
    what = (
        "rsLoRA scale ignored" if cfg.use_rslora else "alpha_pattern/rank_pattern scale ignored"
    ) + f" (SGLang scales every module by lora_alpha / r = {cfg.lora_alpha:g}/{cfg.r})"
    return [_f("scaling", "changes", describe_scales(changed, what), LORA, "convert")]


def _ranks(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    odd = [m for m in facts.modules if m.r != facts.config.r]
    if not odd:
        return []
    m = odd[0]
    return [
        _f(
            "rank_pattern",
            "refuses",
            f"{len(odd)} modules have a rank other than r="
            f"{facts.config.r} (rank_pattern), but SGLang copies every module into a buffer "
            f'slice of rank r: "LoRA buffer shape ... does not match weight shape '
            f'{list(m.a_shape)}" for {m.path}',
            MEM_POOL,
            "convert",
        )
    ]


def _ignored_tensors(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """Only lora_A/lora_B (lora_embedding_A/B) tensors reach the LoRA buffers."""
    full = [t for t in facts.full_tensors if t.role != "frozen_copy"]
    names = [t.key for t in full] + [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
    names += [f"{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
    if not names:
        return []
    fixes = [tensor_fix(t, CAPS, facts) for t in full] + ["drop"] * sum(m.lora_bias for m in facts.modules)
    fixes += ["base"] * len(facts.trainable_tokens)
    return [
        _f(
            "ignored_tensors",
            "changes",
            f"{len(names)} tensors are not lora_A/lora_B "
            f"weights and never reach SGLang's LoRA buffers, so what they replace or add is "
            f"lost (e.g. {names[0]})",
            MEM_POOL,
            worst_fix(fixes),
        )
    ]


def _init(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    fix = residual_fix(facts)
    if fix is False:
        return []
    return [
        _f(
            "init",
            "changes",
            f"init_lora_weights={facts.config.init_lora_weights!r} is not "
            "read: the adapter is applied to the unmodified base, not to the residual it was "
            "trained on",
            LORA_CONFIG,
            fix,
        )
    ]


def _nothing(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """SGLang places tensors by layer index and module name (substring), not by path, so only
    a (layer, module name) pair the base lacks is lost."""
    paths = facts.base.module_paths if facts.base else None
    if not paths:
        return []
    have = {(layer_of(p), module_name(p)) for p in paths}
    missing = [m.path for m in facts.modules if (layer_of(m.path), m.name) not in have]
    if not missing:
        return []
    return [
        _f(
            "no_such_module",
            "changes",
            f"{len(missing)} of {len(facts.modules)} adapted "
            f"modules match no module of {facts.base_name} ({per_layer(missing)}; e.g. "
            f'{missing[0]}): SGLang skips them ("weight(s) skipped because they did not match '
            'any target module")',
            MEM_POOL,
        )
    ]


def _rule(rid: str, source: Source, summary: str, fn) -> Rule:
    return Rule(f"sglang.{rid}", source, summary, fn)


ENGINE = Engine(
    name="sglang",
    title="SGLang",
    version=VERSION,
    caps=CAPS,
    rules=(
        _rule("dora", MANAGER, "use_dora: ValueError", _dora),
        _rule("added_tokens", MANAGER, "added_tokens.json with new tokens: ValueError", _added_tokens),
        _rule("target_modules", MANAGER, "target_modules as a regex string: ValueError", _targets),
        _rule(
            "scaling",
            LORA,
            "one scale lora_alpha / r for every module: rsLoRA and alpha/rank patterns ignored",
            _scaling,
        ),
        _rule("rank_pattern", MEM_POOL, "a module rank other than r: buffer shape assertion", _ranks),
        _rule(
            "ignored_tensors",
            MEM_POOL,
            "modules_to_save, biases, lora_bias, token rows: ignored",
            _ignored_tensors,
        ),
        _rule("init", LORA_CONFIG, "PiSSA/OLoRA/... inits not read", _init),
        _rule("no_such_module", MEM_POOL, "modules the model lacks: skipped with a warning", _nothing),
    ),
)
