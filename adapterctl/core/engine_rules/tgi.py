"""Hugging Face TGI (text-generation-inference main at db931fcf, 2026-01-08): its LoRA loader is
LoRAX's (``server/text_generation_server/adapters/lora.py`` starts "Origin:
https://github.com/predibase/lorax"): ``LoraConfig.load`` keeps r, lora_alpha and use_rslora
(TGI requires ``peft>=0.14.0``, which reads rsLoRA), ``map_weights_for_model`` takes only
``lora_A.weight``/``lora_B.weight`` of the model's target layers, ``prepare_weights`` scales every
module by ``get_scaling_factor(lora_alpha, config.r, use_rslora)``, returns nothing for a module
kind that a layer lacks, and pads ranks for the SGMV kernels (``punica_sgmv.pad_rank``) setting
``config.r`` to the padded rank for the kinds that follow.

``get_model_with_lora_adapters`` (``server/text_generation_server/models/__init__.py``) loads
the kinds q/k/v/o/gate/up/down_proj, qkv_proj, c_proj and c_fc in that order (no lm_head), and
``build_layer_weight_lookup`` (``server/text_generation_server/utils/adapter.py``) names them by
hard-coded paths ``model.layers.<i>.self_attn.<name>`` / ``model.layers.<i>.mlp.<name>``: an
adapter saved under other paths (a vision-language model's ``model.language_model.layers``) is
logged as unused and changes nothing. Same rules as :mod:`adapterctl.core.engine_rules.lorax`,
cited from TGI's tree; ``read`` (the loader needs the punica CUDA kernels).
"""

from __future__ import annotations

from dataclasses import replace

from adapterctl.core.engine_rules.lorax import CAPS as LORAX_CAPS
from adapterctl.core.engine_rules.lorax import Punica, punica_rules
from adapterctl.core.engine_rules.rules import Namer

VERSION = "db931fcf"
TGI = Namer("tgi", VERSION)
LORA = TGI.source("server/text_generation_server/adapters/lora.py")
MODELS = TGI.source("server/text_generation_server/models/__init__.py")
LOOKUP = TGI.source("server/text_generation_server/utils/adapter.py")
#: ``adapter_layers`` in get_model_with_lora_adapters, in load order
LAYERS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "c_proj",
    "c_fc",
)
CAPS = replace(LORAX_CAPS, lm_head_lora=False, lora_modules=LAYERS)

SPEC = Punica(
    engine=TGI.name,
    lora=LORA,
    pad=LORA,
    unused=MODELS,
    layers={},
    default_layers=LAYERS,
    layers_source=LOOKUP,
    rslora=True,
    paths=True,
)

ENGINE = TGI.engine(title="TGI", caps=CAPS, rules=punica_rules(SPEC))
