"""Which kind of base layer a LoRA module sits on, from shapes and the model type alone (no model
is built). Shared by inspect (headers) and merge (streamed checkpoints); pure Python.

transformers' GPT-2 family uses ``Conv1D``, whose weight is stored (in, out), the transpose of
``nn.Linear``; LoRA tensors keep the Linear layout, so only ΔW is transposed (spec 4.2, 6.1, 11.5:
"derive fan_in_fan_out from the layer type, never from the config").
"""

from __future__ import annotations

#: model_types whose attention/MLP projections are transformers Conv1D (weights stored (in, out)).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}


def base_layer_kind(embedding: bool, a_shape: tuple | None, b_shape: tuple | None,
                    base_shape: tuple | None, model_type: str | None,
                    fan_in_fan_out: bool = False) -> str:
    """'linear', 'conv1d-transposed', 'embedding' or 'conv'.

    With the base weight's shape known, a (in, out) weight means Conv1D; a square weight is
    ambiguous, and then the model type decides. Without it, the config's fan_in_fan_out or the model
    type decides.
    """
    if embedding:
        return "embedding"
    a, b = tuple(a_shape or ()), tuple(b_shape or ())
    if len(a) > 2:
        return "conv"
    if base_shape is not None and len(a) == 2 and len(b) == 2:
        linear_shape, conv1d_shape = (b[0], a[1]), (a[1], b[0])
        if tuple(base_shape) == conv1d_shape and (
            conv1d_shape != linear_shape or model_type in CONV1D_MODEL_TYPES
        ):
            return "conv1d-transposed"
        return "linear"
    if base_shape is None and (fan_in_fan_out or model_type in CONV1D_MODEL_TYPES):
        return "conv1d-transposed"
    return "linear"
