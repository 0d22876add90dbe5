"""vLLM 0.32.0 and LoRA on a vision-language model's vision tower and projector (read from
``vllm/lora/model_manager.py`` ``_maybe_init_mm`` and ``_create_lora_modules``).

vLLM wraps only the language model's layers unless it runs with ``--enable-tower-connector-lora``
and the model class sets ``supports_tower_connector_lora``; a tower module then has no LoRA
wrapper ("no matching PunicaWrapper is found; ... will be ignored") and the adapter's tensors for
it are never applied. The names (``model.vision_tower.*``, ``visual.*``...) are
core/adapter/prefixes.py's."""

from __future__ import annotations

from adapterctl.core.adapter.prefixes import is_vision_path
from adapterctl.core.engine_rules.facts import AdapterFacts
from adapterctl.core.engine_rules.rules import CheckContext, Finding, Source

SOURCE = Source("vllm", "0.32.0", "vllm/lora/model_manager.py")
FLAG = "--enable-tower-connector-lora"
#: model_type -> vLLM class with ``supports_tower_connector_lora = True``
#: (vllm/model_executor/models/{llava,llava_next,qwen2_vl,qwen2_5_vl,idefics3}.py)
TOWER_LORA = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
}


def tower_lora(facts: AdapterFacts, ctx: CheckContext) -> list[Finding]:
    tower = [m.path for m in facts.modules if is_vision_path(m.path)]
    if not tower:
        return []
    what = f"{len(tower)} LoRA module(s) on the vision tower / projector (e.g. {tower[0]})"
    model_type = facts.base.model_type if facts.base else None
    if model_type is None or model_type in TOWER_LORA:
        model = TOWER_LORA.get(model_type or "", "the model")
        return [
            Finding(
                "vllm.tower_lora",
                "flag",
                f"{what}: vLLM applies them only with {FLAG} "
                f"({model}{'' if model_type else ', if it supports it'}); without it they "
                "are ignored",
                SOURCE,
                flags=(FLAG,),
            )
        ]
    return [
        Finding(
            "vllm.tower_lora",
            "changes",
            f"{what}: vLLM's model for {model_type} does not "
            "support LoRA on its tower or connector: those modules are ignored and only "
            "the language model's LoRA is applied",
            SOURCE,
        )
    ]
