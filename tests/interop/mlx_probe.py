"""Run inside mlx-lm's virtualenv (.ci/engines/mlx.sh; never imports adapterctl): feed
``linear_to_lora_layers`` a Conv1d, a SwitchLinear with and without DoRA, and a tied-embedding
Llama with LoRA on embed_tokens; print what mlx-lm did (JSON). tests/interop/test_mlx_rules.py
asserts ``check --engine mlx`` says the same."""

import json
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama
from mlx_lm.models.switch_layers import SwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

out = {}
cfg = {"rank": 4, "scale": 2.0, "dropout": 0.0}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)
        self.switch = SwitchLinear(8, 8, 2)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [Block()]


for name, keys, dora in (("conv", ["conv"], False), ("switch_dora", ["switch"], True), ("switch", ["switch"], False)):
    try:
        linear_to_lora_layers(Tiny(), 1, {**cfg, "keys": keys}, use_dora=dora)
        out[name] = "ok"
    except ValueError as err:
        out[name] = f"ValueError: {err}"

args = llama.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                       num_attention_heads=2, rms_norm_eps=1e-6, vocab_size=40, num_key_value_heads=2,
                       tie_word_embeddings=True)
model = llama.Model(args)
out["tied_has_lm_head"] = hasattr(model, "lm_head")
x = mx.array([[1, 2, 3]])
base = model(x)
linear_to_lora_layers(model, 1, {**cfg, "keys": ["model.embed_tokens"]})
emb = model.model.embed_tokens
emb.lora_b = mx.random.normal(emb.lora_b.shape)
h = model.model(x)  # the hidden states with the LoRA on the input lookup
with_lora = model(x)
input_only = emb.embedding.as_linear(h)  # PEFT: the tied head keeps the base table
out["logits_differ_from_input_only"] = float(mx.abs(with_lora - input_only).max())
print(json.dumps(out))
