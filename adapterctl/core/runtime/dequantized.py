"""Load a base whose checkpoint is FP8, MXFP4 or compressed-tensors, dequantized to one float dtype
(spec 6.4): the weights come from io's checkpoint reader, the one dequantization merge uses too
(io/checkpoint/quantized.py), so an attached model and a merged one start from the same base. transformers
builds the model from the config without its ``quantization_config`` and takes the dequantized
tensors as its parameters (``state_dict=``: its own key renames apply, nothing is copied again).
"""

from __future__ import annotations

from typing import Any

from adapterctl.errors import UnsupportedError, UsageError
from adapterctl.io.checkpoint.quantized import dequantized_on_read, quant_method
from adapterctl.io.folders.model_dir import ModelFiles

__all__ = ["check_quantize", "dequantized_on_read", "load_dequantized"]


def check_quantize(files: ModelFiles, quantize: str | None, shown: str) -> None:
    if quantize:
        raise UsageError(
            f"{shown}: the checkpoint is already quantized "
            f"({quant_method(files.config)}); it is dequantized to --dtype on load",
            hint="Drop --quantize (or give the unquantized model as the base).",
        )


def load_dequantized(files: ModelFiles, kwargs: dict[str, Any], dtype: str):
    """The model with every weight dequantized to ``dtype`` (a float dtype name), placed by the
    rest of ``kwargs`` (device_map, max_memory...). About one copy of the model in ``dtype``."""
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from adapterctl.io.checkpoint.reader import CheckpointReader

    trust = bool(kwargs.get("trust_remote_code"))
    config = AutoConfig.from_pretrained(str(files.root), trust_remote_code=trust)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # not a declared attribute of PretrainedConfig
    # Any: transformers types the lazy mapping's values without their from_pretrained
    model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise UnsupportedError(
            f"{files.root}: a {quant_method(files.config)} base of model type "
            f"{config.model_type!r} is not a causal LM transformers knows",
            hint="Dequantized loading needs transformers' own model class.",
        )
    target = getattr(torch, dtype)
    with CheckpointReader(files) as reader:
        state = {s.key: reader.get(s).to(target) for s in reader.logical_tensors()}
    rest = {k: v for k, v in kwargs.items() if k != "dtype"}
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=target, **rest)
