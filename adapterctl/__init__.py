"""adapterctl: inspect, attach, convert, merge, push and generate with LoRA adapters.

Importing this package is cheap: the heavy parts (torch, transformers) load only when one of the
engine functions below is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.3.0"

# Public API, resolved lazily so that `import adapterctl` never pulls in torch.
_LAZY = {
    "inspect_adapter": ("adapterctl.core.adapter.inspect", "inspect_adapter"),
    "read_adapter_config": ("adapterctl.core.adapter.config", "read_adapter_config"),
    "LoraAdapterConfig": ("adapterctl.core.adapter.config", "LoraAdapterConfig"),
    "load_adapter": ("adapterctl.core.lora.loaded", "load_adapter"),
    "load_base": ("adapterctl.core.runtime.model", "load_base"),
    "Placement": ("adapterctl.core.runtime.model", "Placement"),
    "attach_adapter": ("adapterctl.core.runtime.attach", "attach_adapter"),
    "set_active": ("adapterctl.core.runtime.attach", "set_active"),
    "detach": ("adapterctl.core.runtime.attach", "detach"),
    "row_adapters": ("adapterctl.core.runtime.attach", "row_adapters"),
    "fold": ("adapterctl.core.runtime.attach", "fold"),
    "unfold": ("adapterctl.core.runtime.attach", "unfold"),
    "attached_adapters": ("adapterctl.core.runtime.attach", "attached_adapters"),
    "greedy_complete": ("adapterctl.core.generate.textgen", "greedy_complete"),
    # the commands' own steps, for scripts: attach, generate, merge --to-adapter, push
    "AdapterChoice": ("adapterctl.core.runtime.session", "AdapterChoice"),
    "open_session": ("adapterctl.core.runtime.session", "open_session"),
    "open_generation": ("adapterctl.core.generate.run", "open_generation"),
    "run_generation": ("adapterctl.core.generate.run", "run_generation"),
    "combine_to_adapter": ("adapterctl.core.merge.to_adapter", "combine_to_adapter"),
    "plan_push": ("adapterctl.core.publish.push", "plan_push"),
    "push_plan": ("adapterctl.core.publish.push", "push_plan"),
}

__all__ = [
    "__version__",
    "inspect_adapter",
    "read_adapter_config",
    "LoraAdapterConfig",
    "load_adapter",
    "load_base",
    "Placement",
    "attach_adapter",
    "set_active",
    "detach",
    "row_adapters",
    "fold",
    "unfold",
    "attached_adapters",
    "greedy_complete",
    "AdapterChoice",
    "open_session",
    "open_generation",
    "run_generation",
    "combine_to_adapter",
    "plan_push",
    "push_plan",
]  # written out for type checkers (a test holds it equal to _LAZY's names)

if TYPE_CHECKING:  # the same names, typed, for type checkers and editors (never imported at run time)
    from adapterctl.core.adapter.config import LoraAdapterConfig, read_adapter_config
    from adapterctl.core.adapter.inspect import inspect_adapter
    from adapterctl.core.generate.run import open_generation, run_generation
    from adapterctl.core.generate.textgen import greedy_complete
    from adapterctl.core.lora.loaded import load_adapter
    from adapterctl.core.merge.to_adapter import combine_to_adapter
    from adapterctl.core.publish.push import plan_push, push_plan
    from adapterctl.core.runtime.attach import (
        attach_adapter,
        attached_adapters,
        detach,
        fold,
        row_adapters,
        set_active,
        unfold,
    )
    from adapterctl.core.runtime.model import Placement, load_base
    from adapterctl.core.runtime.session import AdapterChoice, open_session


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'adapterctl' has no attribute {name!r}")
