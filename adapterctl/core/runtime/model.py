"""Load a base causal LM with transformers: dtype, accelerate placement, bitsandbytes quantization
(FP8, MXFP4 and compressed-tensors checkpoints: dequantized on load, core/runtime/dequantized.py).

The folder comes from :func:`adapterctl.io.hub.resolve.resolve_model_dir` (the one place where a path
or Hub id becomes a local folder). Library exceptions are translated into ours here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterctl.errors import (
    AdapterctlError,
    IncompatibleBaseError,
    InvalidAdapterError,
    MissingDependencyError,
    UsageError,
)
from adapterctl.io.dtypes import AUTO, check_dtype, checkpoint_dtype
from adapterctl.io.folders.model_dir import locate_model_files
from adapterctl.io.hub.ref import HubOptions
from adapterctl.io.hub.resolve import resolve_model_dir

DEVICE_MAPS = ("auto", "cpu", "cuda", "balanced", "sequential")
QUANTIZE = ("nf4", "fp4", "int8")


@dataclass(frozen=True)
class LoadedBase:
    model: Any
    tokenizer: Any | None
    path: Path
    dtype: str
    devices: dict[str, int]  # device -> number of parameters placed there ("disk", "meta" too)
    quantize: str | None = None

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "dtype": self.dtype,
            "devices": self.devices,
            "quantize": self.quantize,
        }


def parse_device_map(value: str | dict | None):
    """'auto'/'cpu'/'cuda'/'balanced'/'sequential', a JSON object, or None."""
    if value is None or isinstance(value, dict):
        return value
    if value in DEVICE_MAPS:
        return {"": "cpu"} if value == "cpu" else ({"": 0} if value == "cuda" else value)
    try:
        doc = json.loads(value)
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--device-map {value!r} is neither one of {', '.join(DEVICE_MAPS)} nor a JSON object",
            hint='Example: \'{"model.embed_tokens": 0, "": "cpu"}\'',
        ) from err
    if not isinstance(doc, dict):
        raise UsageError("--device-map JSON must be an object of module -> device")
    return doc


def parse_max_memory(value: str | dict | None) -> dict | None:
    """'0=10GiB,cpu=30GiB' or a JSON object -> {0: '10GiB', 'cpu': '30GiB'}."""
    if value is None or isinstance(value, dict):
        return value
    try:
        doc = json.loads(value)
    except json.JSONDecodeError:
        doc = {}
        for part in filter(None, value.split(",")):
            key, sep, amount = part.partition("=")
            if not sep:
                raise UsageError(
                    f"--max-memory {value!r}: expected DEVICE=SIZE pairs",
                    hint="Example: --max-memory 0=10GiB,cpu=30GiB",
                ) from None
            doc[key.strip()] = amount.strip()
    return {int(k) if str(k).isdigit() else k: v for k, v in doc.items()}


def _torch_dtype(dtype: str):
    from adapterctl.io.checkpoint.stored import torch_dtype

    return AUTO if check_dtype(dtype) == AUTO else torch_dtype(dtype)


def quantization_config(quantize: str | None, dtype: str):
    """bitsandbytes config; refused with exit code 7 where bitsandbytes cannot run."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as err:  # ImportError, or a broken native library
        raise MissingDependencyError(
            f"--quantize {quantize} needs bitsandbytes, which is not usable here ({err})",
            hint="pip install bitsandbytes (CUDA, or a CPU build >= 0.45), or drop --quantize.",
        ) from err
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    import torch

    compute = torch.float32 if dtype in (AUTO, "float32") else getattr(torch, dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_compute_dtype=compute)


def _config_dtype(config: dict) -> str:
    """The checkpoint's dtype (the one answer every engine gets: :func:`checkpoint_dtype`)."""
    return checkpoint_dtype(config)


def device_summary(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    hf_map = getattr(model, "hf_device_map", None) or {}
    offloaded = {k for k, v in hf_map.items() if v == "disk"}
    for name, p in model.named_parameters():
        dev = p.device.type if p.device.type in ("cpu", "meta") else str(p.device)
        if dev == "meta":
            dev = (
                "disk"
                if any(k == "" or name == k or name.startswith(k + ".") for k in offloaded)
                else "cpu-offload"
            )
        counts[dev] = counts.get(dev, 0) + p.numel()
    return counts


@dataclass(frozen=True)
class Placement:
    """How a base is loaded: its dtype, where its layers go (``device_map``, ``max_memory``,
    ``offload_folder``), its quantization, and whether transformers may import the model
    repo's own code (off by default)."""

    dtype: str = "auto"
    device_map: str | dict | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None
    quantize: str | None = None
    trust_remote_code: bool = False  # let transformers import the model repo's own code


def load_base(
    path_or_ref: str | Path,
    placement: Placement = Placement(),
    *,
    hub: HubOptions | None = None,
    tokenizer: bool = True,
) -> LoadedBase:
    """Load a transformers causal LM (safetensors, sharded or not) and its tokenizer, placed as
    ``placement`` says."""
    dtype, quantize, trust_remote_code = placement.dtype, placement.quantize, placement.trust_remote_code
    device_map, max_memory, offload_folder = (
        placement.device_map,
        placement.max_memory,
        placement.offload_folder,
    )
    folder = resolve_model_dir(path_or_ref, hub)
    files = locate_model_files(folder, str(path_or_ref))
    check_remote_code(files.config, trust_remote_code, str(path_or_ref))
    from adapterctl.core.runtime.dequantized import check_quantize, dequantized_on_read, load_dequantized

    dequantize = dequantized_on_read(files.config)  # FP8 / MXFP4 / compressed-tensors (spec 6.4)
    if dequantize:
        check_quantize(files, quantize, str(path_or_ref))
    dmap = parse_device_map(device_map)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    qconf = quantization_config(quantize, dtype if dtype != "auto" else _config_dtype(files.config))
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        dmap = dmap or {"": _default_device()}
    if isinstance(dmap, dict):
        check_device_map(files.root, dmap, quantize, trust_remote_code)
    if dmap is not None:
        kwargs["device_map"] = dmap
    if max_memory is not None:
        kwargs["max_memory"] = parse_max_memory(max_memory)
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    load = (
        (lambda: load_dequantized(files, kwargs, dtype if dtype != AUTO else _config_dtype(files.config)))
        if dequantize
        else None
    )
    model = _from_pretrained(files.root, kwargs, str(path_or_ref), load)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = _load_tokenizer(files.root, trust_remote_code) if tokenizer else None
    dt = str(getattr(model, "dtype", "")).removeprefix("torch.")
    return LoadedBase(model, tok, files.root, dt, device_summary(model), quantize)


def check_remote_code(config: dict, trust: bool, shown: str) -> None:
    """A config whose class lives in the repo (``auto_map``) and that this transformers does not
    know needs the repo's Python code: refuse unless the user said ``--trust-remote-code``."""
    if trust or not isinstance(config.get("auto_map"), dict):
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # transformers' own class is used; the repo's code is never imported
    raise UsageError(
        f"{shown}: the model's code lives in its repo (config.json auto_map, "
        f"model_type {model_type!r}); running that code is off by default",
        hint="Read the repo's .py files; if you trust them, pass --trust-remote-code.",
    )


def check_device_map(root: Path, dmap: dict, quantize: str | None, trust_remote_code: bool = False) -> None:
    """An explicit map must name existing modules, cover every parameter, and use devices that
    exist here (transformers would silently guess, or fail deep inside accelerate)."""
    import torch
    from transformers import AutoConfig

    with torch.device("meta"):
        config = AutoConfig.from_pretrained(str(root), trust_remote_code=trust_remote_code)
        auto = model_class({"model_type": config.model_type})  # the class load_base builds
        skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
    modules = {name for name, _ in skeleton.named_modules()}
    unknown = [k for k in dmap if k not in modules]
    if unknown:
        raise UsageError(
            f"--device-map names modules the model does not have: {', '.join(unknown[:5])}",
            hint=f"Top-level modules: {', '.join(n for n in modules if n.count('.') <= 1 and n)}",
        )
    uncovered = [
        n
        for n, _ in skeleton.named_parameters()
        if not any(k == "" or n == k or n.startswith(k + ".") for k in dmap)
    ]
    if uncovered:
        raise UsageError(
            f"--device-map places no device for {len(uncovered)} parameter(s), e.g. "
            f"{', '.join(uncovered[:3])}",
            hint='Add their modules, or "" for the rest.',
        )
    for device in set(dmap.values()):
        _check_device(device, quantize)


def _check_device(device, quantize: str | None) -> None:
    import torch

    text = str(device)
    if text in ("cpu", "disk", "meta"):
        if text == "disk" and quantize:
            raise UsageError(
                "a quantized base cannot be offloaded to disk",
                hint="Use cpu instead of disk in --device-map, or drop --quantize.",
            )
        return
    index = (
        int(text)
        if text.isdigit()
        else (int(text.split(":")[1]) if text.startswith("cuda:") else 0 if text == "cuda" else None)
    )
    if index is None:
        raise UsageError(f"--device-map device {text!r} is not cpu, disk, cuda[:N] or a GPU index")
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise MissingDependencyError(
            f"--device-map uses {text!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)",
            hint="Use cpu/disk, or run on a machine with that GPU.",
        )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_class(config: dict):
    """The Auto class that builds the whole model: a vision-language wrapper (Llava, Qwen2.5-VL,
    Mllama: not causal LMs to transformers) as its ``...ForConditionalGeneration``, with the
    vision tower an adapter may target; every other model as a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    vlm = config.get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    return AutoModelForImageTextToText if vlm else AutoModelForCausalLM


def _from_pretrained(root: Path, kwargs: dict, shown: str, load=None):
    from transformers.utils import logging as hf_logging

    from adapterctl.io.folders.files import read_json_object

    hf_logging.disable_progress_bar()  # the CLI shows its own progress; keep stderr readable
    try:
        if load:
            return load()
        auto = model_class(read_json_object(root / "config.json", "model config.json"))
        return auto.from_pretrained(str(root), **kwargs)
    except AdapterctlError:
        raise
    except (ValueError, KeyError, RuntimeError, OSError, ImportError, TypeError) as err:
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        if "offload" in text.lower() or "device_map" in text.lower() or "memory" in text.lower():
            raise UsageError(
                f"{shown}: the model does not fit the placement: {text}",
                hint="Raise --max-memory, add --offload-folder, or change --device-map.",
            ) from err
        if isinstance(err, ImportError) or "bitsandbytes" in text.lower() or "cuda" in text.lower():
            raise MissingDependencyError(
                f"{shown}: cannot load the model here: {text}",
                hint="Check bitsandbytes / CUDA, or drop --quantize.",
            ) from err
        if "size mismatch" in text.lower() or "shape" in text.lower():
            raise IncompatibleBaseError(f"{shown}: {text}") from err
        raise InvalidAdapterError(
            f"{shown}: transformers cannot load this model: {text}",
            hint="Is config.json a causal LM that this transformers knows?",
        ) from err


#: files whose presence says the folder has a tokenizer (JSON ones are checked when loading fails)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(root: Path, trust_remote_code: bool = False):
    """The folder's tokenizer, or None when it has no tokenizer files (a model folder without one is
    still usable for logits). Tokenizer files that are there but cannot be loaded are bad input,
    named, never reported as "no tokenizer"."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root), trust_remote_code=trust_remote_code)
    except Exception as err:
        present = [root / name for name in TOKENIZER_FILES if (root / name).is_file()]
        if not present:
            return None
        raise tokenizer_error(present, err) from err


def tokenizer_error(present: list[Path], err: Exception) -> AdapterctlError:
    """Which tokenizer file is broken (JSON checked first), or transformers' reason naming the
    first file there; a missing package (sentencepiece, tiktoken...) is a missing dependency."""
    from adapterctl.io.folders.files import read_json_object

    if isinstance(err, ImportError):
        return MissingDependencyError(
            f"{present[0]}: loading this tokenizer needs a package that is not installed: {err}",
            hint="pip install it, then retry.",
        )
    for path in present:
        if path.suffix == ".json":
            try:
                read_json_object(path, path.name)
            except AdapterctlError as bad:  # not JSON, not an object: say which file and where
                return bad
    text = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return InvalidAdapterError(
        f"{present[0]}: transformers cannot load the tokenizer ({type(err).__name__}: {text})",
        hint="Fix or download the tokenizer files again (without them, logits still work but no "
        "text can be generated).",
    )
