"""PEFT-made fixtures for convert: mutated-init training runs and full fine-tunes (PEFT is the
oracle; every adapter we write must load in it and give the trained model's logits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IDS = [[0, 5, 17, 42, 99, 7, 250, 3]]


@dataclass
class MutatedRun:
    base: Path
    init: Path  # saved before "training" (init_lora_weights set to true, as PEFT's docs do)
    trained: Path  # saved as is (config still says pissa/olora)
    peft: Path | None  # PEFT's own conversion (None when PEFT refuses the config)
    logits: object  # the trained residual model's logits on IDS


def make_mutated_run(base: Path, root: Path, init: str = "pissa", seed: int = 0,
                     peft_convert: bool = True, **lora_kwargs) -> MutatedRun:
    """get_peft_model with a mutating init, save init, perturb A/B (training), save trained and
    PEFT's converted adapter (``path_initial_model_for_weight_conversion``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=init,
                                          **lora_kwargs))
    pm.peft_config["default"].init_lora_weights = True
    pm.save_pretrained(str(root / "init"))
    pm.peft_config["default"].init_lora_weights = init
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(str(root / "trained"))
    with torch.no_grad():
        logits = pm(torch.tensor(IDS)).logits
    peft_dir = None
    if peft_convert:
        peft_dir = root / "peft"
        pm.save_pretrained(str(peft_dir), path_initial_model_for_weight_conversion=str(root / "init"))
    return MutatedRun(base, root / "init", root / "trained", peft_dir, logits)


def make_finetune(base, out, changes, max_shard_size: str | None = None) -> None:
    """Save ``base`` with rank-2 updates on the named weights and noise on the named vectors."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in changes:
            p = params[name]
            if p.dim() == 2:
                p.add_(torch.randn(p.shape[0], 2) @ torch.randn(2, p.shape[1]) * 0.05)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), **kwargs)


def peft_logits(base: Path, adapter: Path):
    """Logits of ``adapter`` loaded by PEFT on the ORIGINAL ``base``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    pm = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return pm(torch.tensor(IDS)).logits


def model_logits(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))
