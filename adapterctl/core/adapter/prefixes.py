"""Where the language model sits: text-only and vision-language (VLM) module layouts, and the one
rule that maps an adapter's module paths from the layout it was trained on to its base's.

A decoder can sit at four places, which transformers (5.x, modeling code and its
``conversion_mapping.py``) and PEFT put in module paths and adapter keys:

- ``text``: ``model.layers.N...``, ``lm_head`` (LlamaForCausalLM, Qwen2ForCausalLM,
  Gemma3ForCausalLM, MllamaForCausalLM: also a text-only extraction of a VLM);
- ``vlm``: ``model.language_model.layers.N...``, ``lm_head``, the vision side under ``model.``
  (``model.vision_tower``, ``model.visual``, ``model.vision_model``,
  ``model.multi_modal_projector``): what transformers >= 4.52 builds for Llava, Qwen2.5-VL,
  Gemma-3 and Mllama, so the paths of every adapter PEFT trains on them now;
- ``vlm-legacy``: ``language_model.model.layers.N...``, ``language_model.lm_head``, the vision side
  at the top (``vision_tower.``...): adapters trained before 4.52, and the Llava / Gemma-3 /
  Mllama checkpoints transformers still writes (it renames on load);
- ``text+visual``: ``model.layers.N...`` with ``visual.`` at the top: Qwen2-VL / Qwen2.5-VL
  checkpoints and adapters trained before 4.52.

The mapping is a prefix rewrite (decoder root, output layer, vision prefix); a vision module has
no counterpart in a text-only model, so :meth:`KeyMapping.map` gives None for it and callers
refuse (:func:`vision_problem`). Torch-free: inspect, check, merge and the engine all call it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from adapterctl.core.adapter import problems as P
from adapterctl.errors import IncompatibleBaseError

#: the vision-side submodules of the VLMs above (tower, Qwen's ``visual``, Mllama's
#: ``vision_model``, the projector that feeds the language model)
VISION_PARTS = ("vision_tower", "visual", "vision_model", "multi_modal_projector")
_VISION = re.compile(rf"^(?P<prefix>(?:model\.)?)(?P<part>{'|'.join(VISION_PARTS)})(?:\.|$)")


def is_vision_path(path: str) -> bool:
    """On the vision side (tower or projector) in any of the layouts below."""
    return _VISION.match(path) is not None


@dataclass(frozen=True)
class Layout:
    """Where the decoder (``root``), the output layer (``head``) and the vision side
    (``vision``: the prefix before ``vision_tower`` etc.; None: a text-only model) sit."""

    name: str
    root: str
    head: str
    vision: str | None

    def is_vision(self, path: str) -> bool:
        m = _VISION.match(path)
        return m is not None and self.vision is not None and m["prefix"] == self.vision


TEXT = Layout("text", "model.", "lm_head", None)
VLM = Layout("vlm", "model.language_model.", "lm_head", "model.")
VLM_LEGACY = Layout("vlm-legacy", "language_model.model.", "language_model.lm_head", "")
TEXT_VISUAL = Layout("text+visual", "model.", "lm_head", "")
LAYOUTS = {lay.name: lay for lay in (TEXT, VLM, VLM_LEGACY, TEXT_VISUAL)}


def detect_layout(names: Iterable[str]) -> Layout | None:
    """The layout module paths or checkpoint keys are spelled in; None when they follow none of
    them (GPT-2's ``transformer.h.N``: nothing to map)."""
    names = list(names)
    if any(n.startswith(VLM.root) for n in names):
        return VLM
    if any(n.startswith((VLM_LEGACY.root, VLM_LEGACY.head)) for n in names):
        return VLM_LEGACY
    vision = [m["prefix"] for m in map(_VISION.match, names) if m]
    if "model." in vision:
        return VLM  # an adapter on the vision side only, trained with transformers >= 4.52
    if vision:
        return TEXT_VISUAL if any(n.startswith(TEXT.root) for n in names) else VLM_LEGACY
    if any(n.startswith(TEXT.root) for n in names):
        return TEXT
    return None


def runtime_layout(layout: Layout | None) -> Layout | None:
    """The layout transformers 5 builds from a checkpoint in ``layout``: every VLM is ``vlm``
    (its conversion mapping renames the legacy keys on load)."""
    return VLM if layout in (VLM_LEGACY, TEXT_VISUAL) else layout


@dataclass(frozen=True)
class KeyMapping:
    """Rewrite module paths from the ``source`` layout to the ``target`` layout."""

    source: Layout
    target: Layout

    @property
    def identity(self) -> bool:
        s, t = self.source, self.target
        return (s.root, s.head, s.vision) == (t.root, t.head, t.vision)

    def map(self, path: str) -> str | None:
        """``path`` in the target layout; None for a vision module when the target has none."""
        s, t = self.source, self.target
        if s.is_vision(path):
            return None if t.vision is None else t.vision + path[len(s.vision or "") :]
        if path.startswith(s.root):
            return t.root + path[len(s.root) :]
        if path == s.head or path.startswith(s.head + "."):
            return t.head + path[len(s.head) :]
        return path

    def rules(self) -> list[str]:
        s, t = self.source, self.target
        out = [f"{s.root}* -> {t.root}*"] if s.root != t.root else []
        out += [f"{s.head} -> {t.head}"] if s.head != t.head else []
        if s.vision is not None and t.vision is not None and s.vision != t.vision:
            parts = f"({'|'.join(VISION_PARTS)})"
            out.append(f"{s.vision}{parts}* -> {t.vision}{parts}*")
        return out

    def describe(self) -> str:
        """One line for stderr: ``vlm -> text (model.language_model.* -> model.*)``."""
        return f"{self.source.name} -> {self.target.name} ({'; '.join(self.rules())})"

    def to_dict(self) -> dict:
        return {"from": self.source.name, "to": self.target.name, "rules": self.rules()}


def choose_mapping(
    paths: Iterable[str], target: Layout | None, present: Callable[[str], bool] | None = None
) -> KeyMapping | None:
    """The mapping from the layout ``paths`` (an adapter's module and parameter paths) are in to
    ``target`` (the base's runtime layout); None when none is needed or known.

    With ``present`` (does a path exist in the base?) a mapping is used only when it lands more
    paths than the paths as they are: a base whose names fit already needs no rewrite."""
    paths = list(paths)
    source = detect_layout(paths)
    if source is None or target is None:
        return None
    mapping = KeyMapping(source, target)
    if mapping.identity:
        return None
    if present is not None:
        mapped = sum(1 for p in paths if (q := mapping.map(p)) is not None and present(q))
        if mapped <= sum(1 for p in paths if present(p)):
            return None
    return mapping


def checkpoint_spelling(keys: Iterable[str]) -> KeyMapping | None:
    """From the layout transformers builds to the one a checkpoint's ``keys`` are stored in
    (it still writes Llava / Gemma-3 / Mllama as ``language_model.model.*`` and Qwen2.5-VL as
    ``model.layers.*`` + ``visual.*``, renaming on load): for looking runtime paths up in
    headers. None when the two agree."""
    stored = detect_layout(keys)
    runtime = runtime_layout(stored)
    return None if stored is None or runtime is None or stored == runtime else KeyMapping(runtime, stored)


def spelling_for(paths: Iterable[str], keys: Iterable[str]) -> Callable[[str], str | None]:
    """Path -> the same path spelled in the layout of a checkpoint's ``keys`` (None: a vision
    path with no place there), for lookups in headers."""
    mapping = choose_mapping(paths, detect_layout(keys))
    return (lambda p: p) if mapping is None else mapping.map


def base_mapping(paths: Iterable[str], keys: Iterable[str]) -> KeyMapping | None:
    """The mapping attach and merge use for an adapter with ``paths`` on a base whose checkpoint
    holds ``keys`` (to the layout transformers builds from it): what check and inspect report."""
    return choose_mapping(paths, runtime_layout(detect_layout(keys)))


def in_layout_of(paths: Iterable[str], names: Iterable[str]) -> list[str]:
    """``paths`` spelled in the layout ``names`` (a checkpoint's keys) follow, for checks from
    headers; vision paths a text-only checkpoint has no place for are left out (the loaders
    refuse them, :func:`vision_problem`)."""
    paths = list(paths)
    mapping = choose_mapping(paths, detect_layout(names))
    if mapping is None:
        return paths
    return [q for p in paths if (q := mapping.map(p)) is not None]


def vision_problem(mapping: KeyMapping, paths: Iterable[str], base: str) -> P.Problem | None:
    """An error naming the adapter's vision-side modules when ``mapping`` goes to a text-only
    base: they have no counterpart there, and attaching or merging the rest alone would give a
    model the adapter was never trained as, without a word."""
    lost = sorted(p for p in paths if mapping.map(p) is None)
    if not lost:
        return None
    return P.error(
        "vision_modules_on_text_base",
        f"{len(lost)} adapted module(s) are on the vision side ({', '.join(lost[:3])}"
        f"{' ...' if len(lost) > 3 else ''}), but {base} is a text-only model "
        f"({mapping.target.root}layers...: no {', '.join(VISION_PARTS)})",
        "Use the vision-language base the adapter was trained on, or an adapter trained on the "
        "language model only.",
        error=IncompatibleBaseError,
    )
