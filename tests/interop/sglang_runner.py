"""Feed an adapter folder to SGLang's own LoRA loading code and report what it did (JSON on stdout).

Runs inside SGLang's virtualenv (.ci/engines/sglang.sh), never imports adapterctl. SGLang's server
needs CUDA; its LoRA loader is Python on torch, and this runs it on CPU, in the order the server
does (``LoRAManager.init_lora_adapters`` then ``init_lora_shapes`` then ``init_memory_pool`` /
``load_lora_weight_to_buffer``):

1. ``LoRAConfig(path, base_vocab_size=...)`` and ``LoRAManager.validate_new_adapter`` (DoRA,
   added tokens);
2. ``LoRAAdapter.initialize_weights_from_tensors``: ``_process_weight`` (by layer index) and
   ``_normalize_weights`` (``normalize_qkv_proj``, ``normalize_gate_up_proj``, ...);
3. ``LoRAManager.init_lora_shapes``: target modules and ``max_lora_rank`` inferred from the
   start-up adapters, or checked against ``--lora-target-modules``;
4. what ``LoRAMemoryPool`` does with them: ``get_hidden_dim`` for every target module (its
   buffers), ``get_target_module_name`` for every weight of every layer (the per-layer loop of
   ``load_lora_weight_to_buffer``, which does not catch its ValueError), the buffer-shape check
   (``lora_A`` rows = stacked multiply x rank, ``lora_B`` = the module's output x rank);
5. the delta SGLang's kernels compute from those buffers (the triton backend's
   ``run_qkv_lora``/``run_gate_up_lora`` semantics: slice ``i`` of a stacked module is
   ``B[out_i] @ A[i*r:(i+1)*r]``, times the adapter's one ``scaling = lora_alpha / r``), written
   per original module to ``deltas.safetensors``. This is the only part not executed from SGLang:
   the kernels are Triton/CUDA.

Usage: python sglang_runner.py SPEC.json RESULT.json. The spec names the base and the cases, each
{"name", "out", "adapters": [...], "later": null, "max_lora_rank": null, "lora_target_modules":
null}: ``adapters`` are the start-up ones (``--lora-paths``), ``later`` is loaded afterwards
(``/load_lora_adapter``) and its outcome is the one reported. One process runs every case (the
import of sglang costs most of the time).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STUBBED: list[str] = []


def _stub_gpu_only_imports() -> None:
    """SGLang modules the LoRA loader imports for GPU-only features, replaced by empty modules
    when they cannot be imported on CPU (each one named in the report)."""
    import importlib

    for name in ("sglang.srt.model_loader.loader",):
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure: stub and say so
            mod = types.ModuleType(name)
            mod.DefaultModelLoader = type("DefaultModelLoader", (), {})
            sys.modules[name] = mod
            STUBBED.append(f"{name} ({type(err).__name__}: {err})")


def _base_config(base: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(base))


class _Base(torch.nn.Module):
    """Stands for the base model where SGLang only walks ``named_modules`` (init_lora_shapes)."""


def run(args) -> dict:
    _stub_gpu_only_imports()
    from sglang.srt.lora import utils as U
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig
    from sglang.srt.lora.lora_manager import LoRAManager

    cfg = _base_config(Path(args.base))
    manager = types.SimpleNamespace(
        attn_dp_enabled=False,
        lora_refs={},
        configs={},
        loras={},
        num_pinned_loras=0,
        max_loras_per_batch=8,
        base_model=_Base(),
        base_hf_config=cfg,
        lora_added_tokens_size=None,
    )

    def load(path: str, uid: str):
        ref = types.SimpleNamespace(lora_name=uid, lora_path=path, lora_id=uid, pinned=False)
        config = LoRAConfig(path, base_vocab_size=cfg.vocab_size)
        LoRAManager.validate_new_adapter(manager, config, ref)
        adapter = LoRAAdapter(uid, config, cfg, None, None, None)
        tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        adapter.initialize_weights_from_tensors(tensors)
        manager.configs[uid], manager.loras[uid], manager.lora_refs[uid] = config, adapter, ref
        return adapter

    stage = "load"
    try:
        for i, path in enumerate(args.adapters):
            load(path, f"a{i}")
        stage = "init_lora_shapes"
        targets = set(args.lora_target_modules.split(",")) if args.lora_target_modules else None
        LoRAManager.init_lora_shapes(manager, args.max_lora_rank, targets)
        target_modules, max_rank = set(manager.target_modules), manager.max_lora_rank
        uid = "a0"
        if args.later:
            stage = "load (later)"
            adapter = load(args.later, "later")
            # LoRAMemoryPool.can_support, as validate_new_adapter calls it once a pool exists
            names = U.get_normalized_target_modules(adapter.config.target_modules)
            if adapter.config.r > max_rank or not (names <= target_modules or names == {"all"}):
                raise ValueError(
                    f"LoRA adapter later with rank {adapter.config.r} is incompatible with the "
                    "current LoRA memory pool configuration. Please ensure that the LoRA adapter's "
                    "rank is within the configured `--max-lora-rank` and that the target modules "
                    "are included in `--lora-target-modules`."
                )
            uid = "later"
        stage = "memory_pool"
        deltas, scaling = _pool(manager.loras[uid], target_modules, max_rank, cfg, U)
    except Exception as err:  # noqa: BLE001 - the engine's own exception is the result
        return {
            "outcome": "raised",
            "stage": stage,
            "error": f"{type(err).__name__}: {err}",
            "trace": traceback.format_exc(limit=4),
            "stubbed": STUBBED,
        }
    save_file(deltas, str(Path(args.out) / "deltas.safetensors"))
    return {
        "outcome": "loaded",
        "scaling": scaling,
        "target_modules": sorted(target_modules),
        "max_lora_rank": max_rank,
        "modules": sorted(deltas),
        "stubbed": STUBBED,
    }


def _pool(adapter, target_modules: set[str], max_rank: int, cfg, U) -> tuple[dict, float]:
    """What LoRAMemoryPool builds and loads, then the delta its kernels compute per module."""
    layers = cfg.num_hidden_layers
    dims = {}
    for name in sorted(target_modules):  # init_buffers: one buffer per target module
        if name in U.EMBEDDING_NAMES:
            continue
        dims[name] = U.get_hidden_dim(name, cfg, adapter.base_model, 0)
    r = adapter.config.r
    deltas: dict[str, torch.Tensor] = {}
    for layer_id in range(layers):
        placed: dict[str, dict[str, torch.Tensor]] = {}
        names: dict[str, str] = {}
        for name, w in adapter.layers[layer_id].weights.items():
            target = U.get_target_module_name(name, target_modules)  # raises: ValueError
            placed.setdefault(target, {})["A" if "lora_A" in name else "B"] = w.float()
            names[target] = name
        for target, ab in placed.items():
            if target not in dims:
                raise ValueError(f"no LoRA buffer for {target} ({names[target]})")
            c = U.get_stacked_multiply(target)
            in_dim, out_dim = dims[target]
            A, B = ab.get("A"), ab.get("B")
            if A is None or B is None:
                raise ValueError(f"{names[target]}: lora_A or lora_B missing after normalisation")
            if tuple(A.shape) != (c * r, in_dim) or tuple(B.shape) != (out_dim, r):
                raise AssertionError(
                    f"LoRA buffer shape {[c * r, in_dim]}/{[out_dim, r]} does not match weight "
                    f"shape {list(A.shape)}/{list(B.shape)} ({names[target]})"
                )
            prefix = names[target].split(target)[0]
            for i, (part, lo, hi) in enumerate(_slices(target, cfg, out_dim, c)):
                delta = B[lo:hi] @ A[i * r : (i + 1) * r] * adapter.scaling
                key = (prefix + part).removeprefix("base_model.model.")
                deltas[key] = delta.contiguous()
    return deltas, adapter.scaling


def _slices(target: str, cfg, out_dim: int, c: int) -> list[tuple[str, int, int]]:
    """Output rows of each part of a stacked module (the kernels' output offsets)."""
    if target == "qkv_proj":
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        return [("q_proj", 0, q), ("k_proj", q, q + kv), ("v_proj", q + kv, q + 2 * kv)]
    if target == "gate_up_proj":
        half = out_dim // 2
        return [("gate_proj", 0, half), ("up_proj", half, out_dim)]
    assert c == 1, target
    return [(target, 0, out_dim)]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for case in spec["cases"]:
        args = argparse.Namespace(
            base=spec["base"],
            out=case["out"],
            adapters=case["adapters"],
            later=case.get("later"),
            max_lora_rank=case.get("max_lora_rank"),
            lora_target_modules=case.get("lora_target_modules"),
        )
        Path(args.out).mkdir(parents=True, exist_ok=True)
        results[case["name"]] = run(args)
    import sglang

    Path(sys.argv[2]).write_text(json.dumps({"sglang": sglang.__version__, "cases": results}, indent=1))


if __name__ == "__main__":
    main()
