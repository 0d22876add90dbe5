"""Does this adapter fit this base? The one place that answers it, without torch (spec 4, 6.1, 11).

Three questions, each with one function that inspect (headers), merge (checkpoint headers), the
engine (a built model) and the session's early check all call:

- what kind of layer a LoRA module sits on (:class:`LayerKind`, :func:`lora_kind`,
  :func:`base_layer_kind`);
- which base weight a module's lora_A / lora_B need (:func:`expected_base_shape`,
  :func:`check_shapes`, :func:`check_layer`, :func:`missing_module`,
  :func:`check_modules_present`), and what saved full tensors and trainable-token rows need
  (:func:`check_replacement`, :func:`check_token_rows`);
- whether the adapter was trained on another base (:func:`same_base`,
  :func:`base_name_problem`).

Answers are :class:`~adapterctl.core.adapter.problems.Problem` values: inspect reports them, the
others raise the first error through :func:`~adapterctl.core.adapter.problems.as_error`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from adapterctl.core.adapter import problems as P
from adapterctl.errors import IncompatibleBaseError
from adapterctl.io.folders.model_dir import find_checkpoint_key
from adapterctl.io.hub.ref import looks_like_hub_id

#: model_types whose attention/MLP projections are transformers Conv1D (weights stored (in, out)).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}


class LayerKind(str, Enum):
    """The kind of base layer a LoRA module sits on; the value is what ``inspect`` shows.

    transformers' GPT-2 family uses ``Conv1D``, whose weight is stored (in, out), the transpose of
    ``nn.Linear``; LoRA tensors keep the Linear layout, so only ΔW is transposed (spec 4.2, 6.1,
    11.5: "derive fan_in_fan_out from the layer type, never from the config").
    """

    LINEAR = "linear"  # nn.Linear: W (out, in)
    CONV1D_GPT2 = "conv1d-transposed"  # transformers Conv1D: W (in, out), PEFT's fan_in_fan_out
    EMBEDDING = "embedding"  # nn.Embedding: table (V, d); A_e (r, V), B_e (d, r)
    CONV = "conv"  # nn.Conv1d/2d/3d: W (Cout, Cin, k...); A (r, Cin, k...), B (Cout, r, 1...)
    BNB4 = "bnb4"  # bitsandbytes Linear4bit: a Linear whose stored weight is packed
    BNB8 = "bnb8"  # bitsandbytes Linear8bitLt

    def __str__(self) -> str:
        return self.value

    @property
    def fan_in_fan_out(self) -> bool:
        """The weight is stored (in, out): ΔW = (s·B@A)^T."""
        return self is LayerKind.CONV1D_GPT2

    @property
    def quantized(self) -> bool:
        return self in (LayerKind.BNB4, LayerKind.BNB8)

    @property
    def matrix(self) -> bool:
        """A linear map (Linear, Conv1D, bnb Linear): what ``all-linear``, PiSSA/OLoRA and packed
        mixed batches act on."""
        return self in (LayerKind.LINEAR, LayerKind.CONV1D_GPT2, LayerKind.BNB4, LayerKind.BNB8)

    @property
    def lora_layout(self) -> LayerKind:
        """The kind of LoRA tensors this layer takes (Linear layout for every matrix layer)."""
        return self if self in (LayerKind.EMBEDDING, LayerKind.CONV) else LayerKind.LINEAR


# ----- layer kinds ------------------------------------------------------------------------------
def lora_kind(embedding: bool, a_shape: Iterable[int] | None) -> LayerKind:
    """The kind the LoRA tensors themselves say: embedding keys, a conv A (r, Cin, k...) or the
    Linear layout (which a Conv1D base also takes: only the base can tell those apart)."""
    if embedding:
        return LayerKind.EMBEDDING
    return LayerKind.CONV if len(tuple(a_shape or ())) > 2 else LayerKind.LINEAR


def base_layer_kind(
    embedding: bool,
    a_shape: Iterable[int] | None,
    b_shape: Iterable[int] | None,
    base_shape: Iterable[int] | None,
    model_type: str | None,
    fan_in_fan_out: bool = False,
) -> LayerKind:
    """The base layer's kind from shapes and the model type alone (no model is built).

    With the base weight's shape known, a (in, out) weight means Conv1D; a square weight is
    ambiguous, and then the model type decides. Without it, or when it fits neither layout (the
    refusal then names the shape that layout needs), the config's fan_in_fan_out or the model type
    decides.
    """
    kind = lora_kind(embedding, a_shape)
    if kind is not LayerKind.LINEAR:
        return kind
    a, b = tuple(a_shape or ()), tuple(b_shape or ())
    if base_shape is not None and len(a) == 2 and len(b) == 2:
        linear_shape, conv1d_shape = (b[0], a[1]), (a[1], b[0])
        if tuple(base_shape) == conv1d_shape and (
            conv1d_shape != linear_shape or model_type in CONV1D_MODEL_TYPES
        ):
            return LayerKind.CONV1D_GPT2
        if tuple(base_shape) == linear_shape:
            return LayerKind.LINEAR
    if fan_in_fan_out or model_type in CONV1D_MODEL_TYPES:
        return LayerKind.CONV1D_GPT2
    return LayerKind.LINEAR


# ----- shapes -----------------------------------------------------------------------------------
def expected_base_shape(
    kind: LayerKind, a_shape: Iterable[int] | None, b_shape: Iterable[int] | None
) -> tuple[int, ...] | None:
    """The base weight lora_A (r, in, ...) and lora_B (out, r, ...) need, in the base's stored
    layout (spec 4.1): Linear (out, in), Conv1D (in, out), Embedding (V, d) with A_e (r, V) and
    B_e (d, r), conv (Cout, Cin, k...). None when a tensor is missing or has fewer than 2 dims.

    A grouped conv stores (Cout, Cin/groups, k...): the engine passes the ungrouped shape
    (:func:`adapterctl.core.runtime.layers.lora_base_shape`)."""
    a, b = tuple(a_shape or ()), tuple(b_shape or ())
    if len(a) < 2 or len(b) < 2:
        return None
    if kind is LayerKind.CONV:
        return (b[0], *a[1:])
    if kind in (LayerKind.CONV1D_GPT2, LayerKind.EMBEDDING):
        return (a[1], b[0])
    return (b[0], a[1])


def fan_in_out(kind: LayerKind, base_shape: Iterable[int]) -> tuple[int, int]:
    """(in, out) of a base weight in LoRA's terms: what A reads and what B writes."""
    s = tuple(base_shape)
    if kind in (LayerKind.CONV1D_GPT2, LayerKind.EMBEDDING):
        return s[0], s[1]
    return s[1], s[0]


def _shape(shape: Iterable[int] | None) -> list[int] | None:
    return None if shape is None else list(shape)


def missing_module(path: str, a_shape: Iterable[int] | None, b_shape: Iterable[int] | None) -> P.Problem:
    return P.error(
        "module_not_in_base",
        f"{path}: no such module in the base (lora_A {_shape(a_shape)}, lora_B {_shape(b_shape)})",
        "Is this adapter for another architecture?",
        error=IncompatibleBaseError,
    )


def check_layer(path: str, lora: LayerKind, base: LayerKind | None, layer: str) -> P.Problem | None:
    """Can a LoRA of kind ``lora`` wrap this base layer (``layer``: its class name)?"""
    if base is None:
        return P.error(
            "unsupported_layer",
            f"{path}: is a {layer}, which LoRA cannot wrap",
            "Target Linear, Conv1D, Embedding or Conv layers only.",
            error=IncompatibleBaseError,
        )
    if lora is not base.lora_layout:
        return P.error(
            "layer_kind_mismatch",
            f"{path}: adapter holds {lora} LoRA tensors but the base layer is {layer}",
            "Is this adapter for another architecture?",
            error=IncompatibleBaseError,
        )
    return None


def check_shapes(
    path: str,
    kind: LayerKind,
    a_shape: Iterable[int] | None,
    b_shape: Iterable[int] | None,
    base_shape: Iterable[int],
    bias_shape: Iterable[int] | None = None,
    *,
    layer: str | None = None,
) -> P.Problem | None:
    """Do lora_A / lora_B (and a lora_B bias) fit a base weight of ``base_shape``?"""
    expected = expected_base_shape(kind, a_shape, b_shape)
    if expected is None:
        return None  # unpaired or malformed tensors: the adapter's own checks report those
    base = tuple(base_shape)
    fan_in, fan_out = fan_in_out(kind, base) if len(base) >= 2 else (None, None)
    what = f"{layer}: " if layer else ""
    if base != expected:
        return P.error(
            "shape_mismatch",
            f"{path}: base weight is {list(base)} ({what}in {fan_in}, out {fan_out}) but lora_A "
            f"{_shape(a_shape)} and lora_B {_shape(b_shape)} need {list(expected)}",
            "The adapter was trained on a different model size.",
            error=IncompatibleBaseError,
        )
    if bias_shape is not None and tuple(bias_shape) != (fan_out,):
        return P.error(
            "shape_mismatch",
            f"{path}: lora_B.bias {_shape(bias_shape)} does not fit out={fan_out}",
            "The file is inconsistent; save the adapter again.",
            error=IncompatibleBaseError,
        )
    return None


def check_replacement(param: str, shape: Iterable[int], base_shape: Iterable[int] | None) -> P.Problem | None:
    """Does a full tensor saved in the adapter (modules_to_save, biases, saved embeddings; spec
    4.3) replace a base parameter of the same shape?"""
    if base_shape is None:
        return P.error(
            "replacement_not_in_base",
            f"{param}: saved in the adapter (shape {_shape(shape)}) but the base has no such parameter",
            "Is this adapter for another architecture?",
            error=IncompatibleBaseError,
        )
    if tuple(shape) != tuple(base_shape):
        return P.error(
            "replacement_shape_mismatch",
            f"{param}: saved in the adapter as "
            f"{_shape(shape)} but the base parameter is {_shape(base_shape)}",
            "Resized vocabulary? Resize the base model's embeddings first.",
            error=IncompatibleBaseError,
        )
    return None


def check_token_rows(
    emb: str, indices: list[int], rows_shape: Iterable[int], table_shape: Iterable[int]
) -> P.Problem | None:
    """Do trainable-token rows (len(indices), d) fit an embedding table (V, d)? (spec 4.3)"""
    rows, table = tuple(rows_shape), tuple(table_shape)
    top = max(indices, default=0)
    if (
        len(rows) != 2
        or len(table) != 2
        or rows[1] != table[1]
        or top >= table[0]
        or (min(indices, default=0) < 0)
    ):
        return P.error(
            "token_rows_mismatch",
            f"{emb}: token rows {list(rows)} / max index {top} do not fit the embedding table {list(table)}",
            "Resized vocabulary? Resize the base model's embeddings first.",
            error=IncompatibleBaseError,
        )
    return None


def check_modules_present(
    paths: list[str], base_keys: set[str], tied_head: bool, shown: str, model_type: str | None
) -> P.Problem | None:
    """The early check before a base is loaded: refuse an adapter none of whose modules exist in
    the checkpoint (a Llama adapter on GPT-2). A tied head has no weight of its own."""

    def present(path: str) -> bool:
        return bool(find_checkpoint_key(path + ".weight", base_keys)) or (tied_head and "head" in path)

    paths = sorted(paths)
    if not paths or any(present(p) for p in paths):
        return None
    model = model_type or "unknown model type"
    return P.error(
        "no_module_in_base",
        f"none of its {len(paths)} LoRA modules exist in {shown} ({model}); e.g. "
        f"{', '.join(paths[:3])}; the base has weights like {', '.join(sorted(base_keys)[:3])}",
        "Use the base model the adapter was trained on (see base_model_name_or_path).",
        error=IncompatibleBaseError,
    )


# ----- base names -------------------------------------------------------------------------------
#: a Hugging Face cache snapshot: ``.../models--user--repo/snapshots/<sha>``
_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<repo>[^/]+)/snapshots/[^/]+$")


def canonical_base(ref: str) -> str:
    """``user/repo`` for a Hub id (its ``@revision`` dropped) and for a Hub cache snapshot folder
    (the Hub forbids ``--`` in ids, so the folder name maps back); a local path without its
    trailing slash."""
    text = ref.strip().replace("\\", "/")
    text = text.rstrip("/") or text
    snap = _SNAPSHOT.search(text)
    if snap:
        return snap["repo"].replace("--", "/")
    if looks_like_hub_id(text):
        return text.partition("@")[0]
    return text


def same_base(trained_on: str, given: str) -> bool:
    """Is ``given`` (what the user passed, or a loaded model's folder) the base an adapter names in
    ``base_model_name_or_path``? Lenient on purpose: it only decides a warning. The same Hub id or
    path, the same last component (a local copy of ``user/repo`` named ``repo``), or the same
    folder once resolved."""
    a, b = canonical_base(trained_on), canonical_base(given)
    if a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]:
        return True
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def base_name_problem(trained_on: str | None, given: str | None) -> P.Problem | None:
    """A warning when the adapter names another base than ``given`` (PEFT never checks, 1.8)."""
    if not trained_on or not given or same_base(trained_on, given):
        return None
    return P.warning(
        "base_name_differs",
        f"adapter was trained on {trained_on!r}, base given is {given!r}",
        "Shapes fit; check it is the same model (on another base the outputs may be meaningless).",
    )
