"""Hugging Face TGI (text-generation-inference at 45d95bdc, the 3.3 line): its LoRA loader is
LoRAX's (``server/text_generation_server/adapters/lora.py`` starts "Origin:
https://github.com/predibase/lorax"): ``LoraConfig.load`` keeps r, lora_alpha and use_rslora,
``map_weights_for_model`` takes only ``lora_A.weight``/``lora_B.weight`` of the model's target
layers, ``prepare_weights`` scales every module by ``get_scaling_factor(lora_alpha, r,
use_rslora)`` and returns nothing for a module kind that a layer lacks.
``get_model_with_lora_adapters`` (``server/text_generation_server/models/__init__.py``) attaches
LoRA to q/k/v/o/gate/up/down_proj only (no lm_head) and logs the tensors left over as unused.
Same rules as :mod:`adapterctl.core.engine_rules.lorax`, cited from TGI's tree.
"""

from __future__ import annotations

from dataclasses import replace

from adapterctl.core.engine_rules.lorax import CAPS as LORAX_CAPS
from adapterctl.core.engine_rules.lorax import punica_rules
from adapterctl.core.engine_rules.rules import Engine, Source

VERSION = "45d95bdc"
LORA = Source("tgi", VERSION, "server/text_generation_server/adapters/lora.py")
MODELS = Source("tgi", VERSION, "server/text_generation_server/models/__init__.py")
#: ``adapter_layers`` in get_model_with_lora_adapters
LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CAPS = replace(LORAX_CAPS, lm_head_lora=False, lora_modules=LAYERS)

ENGINE = Engine(
    name="tgi",
    title="TGI",
    version=VERSION,
    caps=CAPS,
    rules=punica_rules("tgi", LORA, MODELS, '"unused adapter weights" warning', LAYERS, MODELS),
)
