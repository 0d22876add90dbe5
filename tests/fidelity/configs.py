"""PEFT LoRA configurations for the fidelity matrix, after PEFT's own test suite: the decoder-model
LoRA entries of ``tests/test_decoder_models.py`` (``ALL_CONFIGS``: default targets, r=8,
alpha=32, dropout 0.05; with ``trainable_token_indices=[0, 1, 3]``; aLoRA), the LoRA variants of
``tests/test_custom_models.py`` (``TEST_CASES``: modules_to_save, DoRA, embeddings, lora_bias,
rsLoRA, rank/alpha patterns, ...) and the tied-embedding, initialiser and variant tests
(``test_initialization.py``, ``test_bdlora.py``, ``test_velora.py``, ``test_kasa.py``).

Each entry maps an :class:`ArchInfo` (the architecture's module names) to LoraConfig kwargs, or
None where the configuration cannot be written for that architecture. ``REFUSED`` names the
configurations adapterctl refuses by name (exit 5), with the name its message must carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ArchInfo:
    model_type: str
    emb: str  # leaf name of the input embedding (embed_tokens, wte, embed_in, word_embeddings)
    linear: tuple[str, ...]  # leaf names of the Linear / Conv1D layers inside the blocks
    layers: str  # name of the block list (layers, h)
    conv1d: bool  # projections are transformers Conv1D
    tied: bool
    biased: tuple[str, ...] = ()  # leaf names of those layers that have a bias

    @property
    def first(self) -> str:
        return self.linear[0]

    @property
    def last(self) -> str:
        return self.linear[-1]


def _default(**kw) -> Callable[[ArchInfo], dict]:
    return lambda a: dict(target_modules=None, r=8, lora_alpha=32, lora_dropout=0.05, **kw)


CONFIGS: dict[str, Callable[[ArchInfo], dict | None]] = {
    # test_decoder_models.py ALL_CONFIGS (LoRA): PEFT's per-architecture default targets
    "default": _default(),
    "trainable_tokens": _default(trainable_token_indices=[0, 1, 3]),
    "alora": _default(alora_invocation_tokens=[5]),
    # test_custom_models.py TEST_CASES (LoRA)
    "all_linear": lambda a: dict(target_modules="all-linear", r=4, lora_alpha=16),
    "regex": lambda a: dict(target_modules=rf".*\.({a.first}|{a.last})", r=4, lora_alpha=16),
    "dora": lambda a: dict(target_modules="all-linear", r=4, lora_alpha=16, use_dora=True),
    "rslora_patterns": lambda a: dict(target_modules="all-linear", r=4, lora_alpha=8,
                                      use_rslora=True, rank_pattern={a.first: 2},
                                      alpha_pattern={a.last: 5}),
    "lora_bias": lambda a: dict(target_modules="all-linear", r=4, lora_alpha=16, lora_bias=True),
    "lora_bias_biased": lambda a: dict(target_modules=list(a.biased), r=4, lora_alpha=16,
                                       lora_bias=True) if a.biased else None,
    "bias_all": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16, bias="all"),
    "bias_lora_only": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16, bias="lora_only"),
    "exclude": lambda a: dict(target_modules="all-linear", r=4, lora_alpha=16, exclude_modules=[a.last]),
    "layers_to_transform": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16,
                                          layers_to_transform=[1], layers_pattern=a.layers),
    "modules_to_save_head": lambda a: dict(target_modules=[a.first], r=4, lora_alpha=16,
                                           modules_to_save=["lm_head"]),
    "modules_to_save_emb": lambda a: dict(target_modules=[a.first], r=4, lora_alpha=16, modules_to_save=[a.emb]),
    # embeddings and the output layer (tied on half of the architectures)
    "lora_emb": lambda a: dict(target_modules=[a.emb, a.first], r=4, lora_alpha=16),
    "dora_emb": lambda a: dict(target_modules=[a.emb], r=4, lora_alpha=16, use_dora=True),
    "lora_head": lambda a: dict(target_modules=["lm_head", a.first], r=4, lora_alpha=16),
    "lora_emb_head": lambda a: dict(target_modules=[a.emb, "lm_head"], r=4, lora_alpha=16),
    "ewt_lora": lambda a: dict(target_modules=[a.emb, "lm_head"], r=4, lora_alpha=16, ensure_weight_tying=True),
    "ewt_modules_to_save": lambda a: dict(target_modules=[a.first], r=4, lora_alpha=16,
                                          modules_to_save=[a.emb, "lm_head"],
                                          ensure_weight_tying=True),
    "ewt_tokens": lambda a: dict(target_modules=[a.first], r=4, lora_alpha=16, trainable_token_indices=[0, 1, 3],
                                 ensure_weight_tying=True),
    # initialisers that mutate the base (recomputed on load)
    "pissa": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16, init_lora_weights="pissa"),
    "olora": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16, init_lora_weights="olora"),
    # variants
    "velora": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16,
                             velora_config={"num_groups": 4, "init_type": "batch_average"}),
    "bdlora": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16,
                             use_bdlora={"target_modules_bd_a": [a.last],
                                         "target_modules_bd_b": [a.first], "nblocks": 2}),
    "kasa": lambda a: dict(target_modules=[a.first, a.last], r=4, lora_alpha=16, kasa_config={}),
    "layer_replication": lambda a: dict(target_modules=[a.first], r=4, lora_alpha=16,
                                        layer_replication=[[0, 2], [1, 2]]),
}

#: configuration -> the name adapterctl's refusal (exit 5) must carry
REFUSED: dict[str, str] = {
    "alora": "aLoRA",
}
#: (PEFT 0.21 turns "all-linear" on MoE models into target_parameters on the fused experts and
#: the router: applied since issue 17, core/adapter/expert_keys.py, so no longer refused)
#: configuration -> the name a refused merge must carry where the base cannot hold it (a lora_B
#: bias on a layer without bias: attach adds it at run time, a checkpoint has no tensor for it)
MERGE_REFUSED: dict[str, str] = {"lora_bias": "lora_bias"}
