"""The one vocabulary of engine names: what ``--engine`` (check, generate, serve) and ``convert
--for`` accept. Each command takes the part of it that it can run or check, and says which; older
spellings (``llamacpp``, ``mlx-lm``, ...) still name their engine for one release (the CLI warns).
Torch-free: ``--help`` and ``check`` import it."""

from __future__ import annotations

from collections.abc import Iterable

from adapterctl.errors import UsageError

#: every engine, in the order messages list them: our own runtime, then the serving engines
ENGINES = ("adapterctl", "vllm", "sglang", "lorax", "tgi", "llama.cpp", "mlx", "trtllm")
#: what check and convert --for take besides names: every serving engine
ALL = "all"
#: older spellings -> the name (deprecated: removed with the deprecated flags)
ALIASES = {
    "llamacpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "gguf": "llama.cpp",
    "mlx-lm": "mlx",
    "mlx_lm": "mlx",
    "tensorrt-llm": "trtllm",
    "tensorrt_llm": "trtllm",
    "trt-llm": "trtllm",
}
#: the engines whose serving rules ``check`` and ``convert --for`` know
SERVING = ("vllm", "sglang", "lorax", "tgi", "llama.cpp", "mlx", "trtllm")
#: the engines ``serve`` starts a server for
SERVERS = ("vllm", "sglang")
#: the engines ``generate --engine`` runs prompts on (ray: vLLM replicas on Ray Data)
GENERATORS = ("adapterctl", "vllm", "ray")


def canonical_engine(text: str) -> tuple[str, bool]:
    """(the engine's name, whether ``text`` was an older spelling); case does not matter."""
    key = text.strip().lower()
    return (ALIASES[key], True) if key in ALIASES else (key, False)


def engine_name(text: str, allowed: Iterable[str], refusal: str, hint: str | None = None) -> str:
    """``text`` as one of ``allowed`` (a part of :data:`ENGINES`), or a usage error: ``refusal``
    says why (e.g. "not an engine with a server here"), the hint lists what the command takes."""
    name, _ = canonical_engine(text)
    allowed = tuple(allowed)
    if name not in allowed:
        raise UsageError(f"--engine {text!r}: {refusal}", hint=hint or f"Use one of: {', '.join(allowed)}.")
    return name
