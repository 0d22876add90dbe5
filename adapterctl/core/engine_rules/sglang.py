"""SGLang 0.5.23 (the release on PyPI when this was written): which PEFT LoRA adapters it serves
as trained. Read from ``sglang/srt/lora/``: ``lora_config.py`` (what is read from
adapter_config.json: target_modules, r, lora_alpha, use_dora; nothing else), ``lora.py``
(``LoRAAdapter``: one ``scaling = lora_alpha / r`` for every module, tensors grouped by layer
index), ``lora_manager.py`` (``validate_new_adapter``, ``init_lora_shapes``) and
``mem_pool.py`` (copies each tensor into a buffer slice of the config's rank ``r``; weights whose
name matches no target module are skipped with a warning).

SGLang's server needs a GPU, but this loader is Python on torch: tests/interop/
test_sglang_rules.py runs it on CPU (sglang 0.5.23 from PyPI, tests/interop/sglang_runner.py)
on adapters of each kind and asserts ``check`` says what it did: the stacking, unknown-module,
in-layer tensor, scaling, ignored-tensor and serving-flag rules are ``executed``; DoRA, added
tokens, a regex target_modules, rank_pattern, inits, modules the base lacks and MoE experts
(``rules.expert_findings``) are ``read``.

What the execution showed besides the reading: ``normalize_qkv_proj`` stacks q/k/v into
``qkv_proj`` and reads ``weights[v_proj]`` unchecked (q_proj without v_proj: KeyError), k_proj
or v_proj without q_proj and up_proj without gate_proj stay unstacked and match no buffer
(``get_target_module_name``: "Cannot find target module name", at the first batch); a module
name SGLang's default ``get_hidden_dim`` does not know has no buffer (NotImplementedError); a
full tensor inside a decoder layer is placed like a LoRA weight and fails the same way.
"""

from __future__ import annotations

from adapterctl.core.adapter.base_info import module_name
from adapterctl.core.engine_rules.facts import AdapterFacts, layer_of
from adapterctl.core.engine_rules.rules import (
    PARTNERS_KIND,
    SCALE,
    Caps,
    CheckContext,
    Finding,
    Namer,
    init_rule,
    per_layer,
    scale_rule,
    tensor_fix,
    worst_fix,
)

VERSION = "0.5.23"
SGLANG = Namer("sglang", VERSION)
LORA_CONFIG = SGLANG.source("python/sglang/srt/lora/lora_config.py", "executed")
LORA = SGLANG.source("python/sglang/srt/lora/lora.py", "executed")
MANAGER = SGLANG.source("python/sglang/srt/lora/lora_manager.py", "executed")
MEM_POOL = SGLANG.source("python/sglang/srt/lora/mem_pool.py", "executed")
UTILS = SGLANG.source("python/sglang/srt/lora/utils.py", "executed")
# the same files for the rules no interop case exercises yet (DoRA, added tokens, a regex
# target_modules, rank_pattern, inits, modules the base lacks): read
MANAGER_READ = SGLANG.source("python/sglang/srt/lora/lora_manager.py")
MEM_POOL_READ = SGLANG.source("python/sglang/srt/lora/mem_pool.py")
LORA_CONFIG_READ = SGLANG.source("python/sglang/srt/lora/lora_config.py")
#: module names with a buffer size in get_default_hidden_dim (after q/k/v and gate/up stacking)
KNOWN_MODULES = {
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
    "down_proj", "embed_tokens", "lm_head", "q_a_proj", "kv_a_proj_with_mqa", "q_b_proj", "kv_b_proj",
}  # fmt: skip

CAPS = Caps(
    rank_pattern=False,
    dora=False,
    lora_bias=False,
    embedding_lora=True,
    lm_head_lora=True,
)


def _dora(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    if not facts.config.use_dora:
        return []
    return [
        SGLANG.finding(
            "dora",
            "refuses",
            "Failed to load the adapter because LoRA serving currently doesn't support DoRA adapters",
            MANAGER_READ,
            "base",
        )
    ]


def _added_tokens(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    vocab = facts.base.vocab_size if facts.base else None
    ids = [i for i in facts.added_token_ids if vocab is None or i >= vocab]
    if not ids:
        return []
    return [
        SGLANG.finding(
            "added_tokens",
            "refuses",
            "Failed to load the adapter because LoRA serving "
            "currently doesn't support adapters that add tokens to the vocabulary "
            f"(added_tokens.json: {len(ids)} tokens"
            + (f" at or above the base vocabulary of {vocab})" if vocab else ")"),
            MANAGER_READ,
        )
    ]


def _targets(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    tm = facts.config.target_modules
    if not isinstance(tm, str) or tm in ("all-linear", "all"):
        return []
    return [
        SGLANG.finding(
            "target_modules",
            "refuses",
            f"SGLang does not recognize target_modules='{tm}'. "
            "Please use a list of module name suffixes in the adapter's PEFT config, or "
            "explicitly specify --lora-target-modules during server startup.",
            MANAGER_READ,
            "convert",
        )
    ]


def _ranks(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    odd = [m for m in facts.modules if m.r != facts.config.r]
    if not odd:
        return []
    m = odd[0]
    return [
        SGLANG.finding(
            "rank_pattern",
            "refuses",
            f"{len(odd)} modules have a rank other than r="
            f"{facts.config.r} (rank_pattern), but SGLang copies every module into a buffer "
            f'slice of rank r: "LoRA buffer shape ... does not match weight shape '
            f'{list(m.a_shape)}" for {m.path}',
            MEM_POOL_READ,
            "convert",
            kind=SCALE,
        )
    ]


#: (module, the partner SGLang's stacking needs in the same layer): normalize_qkv_proj reads
#: v_proj for every q_proj, q_proj is what stacks k/v_proj, gate_proj is what stacks up_proj
PARTNERS = (("q_proj", "v_proj"), ("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj"))


def missing_partners(paths) -> list[tuple[str, str]]:
    """(adapted module path, path of the partner it lacks in its layer), for the modules SGLang's
    q/k/v and gate/up stacking cannot take alone; a zero LoRA on the partner is exact."""
    have = set(paths)
    out = []
    for path in sorted(have):
        if layer_of(path) is None:
            continue
        for name, partner in PARTNERS:
            if module_name(path) == name:
                other = path[: -len(name)] + partner
                if other not in have and (path, other) not in out:
                    out.append((path, other))
    return out


def _stacking(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """normalize_qkv_proj / normalize_gate_up_proj, per layer (lora.py)."""
    missing = missing_partners(m.path for m in facts.modules)
    if not missing:
        return []
    path, partner = missing[0]
    if module_name(path) == "q_proj":
        message = (
            f"KeyError: '{partner}.lora_A.weight': normalize_qkv_proj stacks q_proj with k_proj "
            "and v_proj and reads v_proj unchecked (q_proj without v_proj)"
        )
    else:
        stacked = "gate_up_proj" if module_name(path) == "up_proj" else "qkv_proj"
        message = (
            f"Cannot find target module name for {path}.lora_A.weight in {{'{stacked}', ...}}: "
            f"{module_name(path)} without {module_name(partner)} is not stacked into {stacked}, "
            "so no LoRA buffer takes it (ValueError at the first batch)"
        )
    return [
        SGLANG.finding(
            "qkv_stacking",
            "refuses",
            f"{message}; {len(missing)} module(s) lack their stacking partner (a zero LoRA on "
            f"{module_name(partner)} makes SGLang load it exactly)",
            LORA,
            "base",
            kind=PARTNERS_KIND,
        )
    ]


def _unknown_modules(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    odd = sorted({m.name for m in facts.modules if m.kind != "embedding"} - KNOWN_MODULES)
    if not odd:
        return []
    return [
        SGLANG.finding(
            "unknown_modules",
            "refuses",
            f"get_hidden_dim not implemented for {odd[0]} (NotImplementedError: SGLang's "
            f"default get_hidden_dim sizes LoRA buffers for {', '.join(sorted(KNOWN_MODULES - {'qkv_proj'}))[:60]}"
            f"... only; models without their own get_hidden_dim, e.g. Llama, Qwen, Mistral; "
            f"modules: {', '.join(odd)})",
            UTILS,
            "drop",
        )
    ]


def _in_layer_tensors(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """Every tensor with a layer index is placed as a LoRA weight by target module name."""
    full = [t for t in facts.full_tensors if layer_of(t.param) is not None and t.role != "frozen_copy"]
    names = [t.key for t in full] + [m.path + ".lora_B.bias" for m in facts.modules if m.lora_bias]
    if not names:
        return []
    fixes = [tensor_fix(t, CAPS, facts) for t in full] + ["drop"] * sum(m.lora_bias for m in facts.modules)
    return [
        SGLANG.finding(
            "in_layer_tensors",
            "refuses",
            f"Cannot find target module name for {names[0]}: a tensor inside a decoder layer that "
            f"is not lora_A/lora_B is placed like a LoRA weight and matches no target module "
            f"(ValueError at the first batch; {len(names)} such tensors)",
            MEM_POOL,
            worst_fix(fixes),
        )
    ]


def _serving_flags(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """init_lora_shapes infers --max-lora-rank and --lora-target-modules from the start-up
    adapters; a later /load_lora_adapter outside them is refused (validate_new_adapter)."""
    if ctx.num_adapters <= 1:
        return []
    targets = ",".join(sorted(ctx.module_names))
    return [
        Finding(
            "sglang.serving_flags",
            "flag",
            f"{ctx.num_adapters} adapters: SGLang infers --max-lora-rank and --lora-target-modules "
            "from the adapters given at start-up; one loaded later with a larger rank or other "
            'modules is refused ("... is incompatible with the current LoRA memory pool '
            'configuration"), so start the server with both',
            MANAGER,
            flags=(f"--max-lora-rank {ctx.max_rank}", f"--lora-target-modules {targets}"),
        )
    ]


def _ignored_tensors(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    """Outside the decoder layers only lora_A/lora_B (lora_embedding_A/B) tensors of embed_tokens
    and lm_head reach the LoRA buffers; other tensors there are skipped."""
    full = [t for t in facts.full_tensors if t.role != "frozen_copy" and layer_of(t.param) is None]
    names = [t.key for t in full]
    names += [f"{e}.token_adapter.trainable_tokens_delta" for e in facts.trainable_tokens]
    if not names:
        return []
    fixes = [tensor_fix(t, CAPS, facts) for t in full]
    fixes += ["base"] * len(facts.trainable_tokens)
    return [
        SGLANG.finding(
            "ignored_tensors",
            "changes",
            f"{len(names)} tensors are not lora_A/lora_B "
            f"weights and never reach SGLang's LoRA buffers, so what they replace or add is "
            f"lost (e.g. {names[0]})",
            MEM_POOL,
            worst_fix(fixes),
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
        SGLANG.finding(
            "no_such_module",
            "changes",
            f"{len(missing)} of {len(facts.modules)} adapted "
            f"modules match no module of {facts.base_name} ({per_layer(missing)}; e.g. "
            f'{missing[0]}): SGLang skips them ("weight(s) skipped because they did not match '
            'any target module")',
            MEM_POOL_READ,
        )
    ]


ENGINE = SGLANG.engine(
    title="SGLang",
    caps=CAPS,
    rules=(
        SGLANG.rule("dora", MANAGER_READ, "use_dora: ValueError", _dora),
        SGLANG.rule(
            "added_tokens", MANAGER_READ, "added_tokens.json with new tokens: ValueError", _added_tokens
        ),
        SGLANG.rule("target_modules", MANAGER_READ, "target_modules as a regex string: ValueError", _targets),
        scale_rule(
            SGLANG.name,
            LORA,
            "one scale lora_alpha / r for every module: rsLoRA and alpha/rank patterns ignored",
            lambda facts, m: facts.config.lora_alpha / facts.config.r,
            lambda facts: (
                (
                    "rsLoRA scale ignored"
                    if facts.config.use_rslora
                    else "alpha_pattern/rank_pattern scale ignored"
                )
                + f" (SGLang scales every module by lora_alpha / r = {facts.config.lora_alpha:g}/{facts.config.r})"
            ),
        ),
        SGLANG.rule(
            "rank_pattern", MEM_POOL_READ, "a module rank other than r: buffer shape assertion", _ranks
        ),
        SGLANG.rule(
            "qkv_stacking",
            LORA,
            "q_proj without v_proj: KeyError; k/v_proj without q_proj, up_proj without gate_proj: "
            "no buffer (ValueError)",
            _stacking,
        ),
        SGLANG.rule(
            "unknown_modules",
            UTILS,
            "a module get_hidden_dim has no size for: NotImplementedError",
            _unknown_modules,
        ),
        SGLANG.rule(
            "in_layer_tensors",
            MEM_POOL,
            "full tensors and lora_B biases inside a layer: ValueError",
            _in_layer_tensors,
        ),
        SGLANG.rule(
            "serving_flags",
            MANAGER,
            "several adapters: --max-lora-rank, --lora-target-modules",
            _serving_flags,
        ),
        SGLANG.rule(
            "ignored_tensors",
            MEM_POOL,
            "modules_to_save, biases and token rows outside the layers: ignored",
            _ignored_tensors,
        ),
        init_rule(SGLANG.name, LORA_CONFIG_READ, "SGLang (which reads no init_lora_weights)"),
        SGLANG.rule(
            "no_such_module", MEM_POOL_READ, "modules the model lacks: skipped with a warning", _nothing
        ),
    ),
)
