"""README.md model cards: the one writer for every folder adapterctl writes (convert, merge,
merge --to-adapter) or pushes (spec section 9.2).

The front matter is what the Hub reads. PEFT's ``save_pretrained`` writes ``library_name: peft``,
``base_model``, ``tags`` (``lora``, ``base_model:adapter:<base>``) and ``pipeline_tag:
text-generation``; a merged model is a transformers model whose Hub relation to its base is
``merge`` (``base_model_relation``). The same kind of folder always gets the same keys, tags and
YAML, whoever writes it. An existing card keeps every other key and all of its text. Rendering is
idempotent (rendering a rendered card changes nothing), so pushing an unchanged folder pushes an
unchanged README and the Hub client skips the commit.

``base_model`` is a Hub id or absent: a local path (PEFT writes the folder it loaded the base
from) means nothing on the Hub, so it is dropped and the caller says so (:func:`card_base`).
"""

from __future__ import annotations

import re
from pathlib import Path

from adapterctl.errors import InvalidAdapterError

ADAPTER, MODEL = "adapter", "model"
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_FOOTER = "Published with [adapterctl](https://github.com/adapterctl/adapterctl)."


def looks_like_model_id(name: str | None) -> bool:
    """A Hub model id (``user/repo`` or a canonical ``repo``), not a local path (an existing
    folder such as ``examples/tiny-base`` is a path even though it reads like an id)."""
    return (
        bool(name)
        and bool(_HUB_ID.match(name))
        and not name.startswith((".", "/", "~"))
        and not Path(name).exists()
    )


def local_base_note(name: str, fix: str) -> str:
    """What a caller says when the base it knows is a local path and the card names none."""
    return f"base model {name!r} is a local path, not a Hub id: the card names no base_model ({fix})"


def card_base(
    name: str | None, fix: str = "set base_model in its README.md, or pass --base-model user/repo to push"
) -> tuple[str | None, list[str]]:
    """(the Hub id to name in a card, notes): ``user/repo@rev`` names ``user/repo``; a local
    path or nothing names no base, with a note saying why and how to fix it."""
    if name and "@" in name and looks_like_model_id(name.split("@", 1)[0]):
        name = name.split("@", 1)[0]
    if looks_like_model_id(name):
        return name, []
    if name:
        return None, [local_base_note(name, fix)]
    return None, []


def split_card(text: str) -> tuple[dict, str]:
    """(front matter, body) of a README; a card without front matter has ``{}``."""
    import yaml

    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        meta = None
    if not isinstance(meta, dict):
        raise InvalidAdapterError(
            "README.md: the YAML front matter is not a mapping",
            hint="Fix the block between the --- lines, or remove it.",
        )
    return meta, text[m.end() :]


def card_metadata(meta: dict, kind: str, base_model: str | None) -> dict:
    """``meta`` with the keys PEFT (adapter) or transformers (merged model) would write."""
    out = dict(meta)
    bases = out.get("base_model")
    bases = bases if isinstance(bases, list) else [bases]
    if not all(isinstance(b, str) and looks_like_model_id(b) for b in bases):
        out.pop("base_model", None)  # PEFT writes local paths here; the Hub wants model ids
    # base_model:<relation>:<id> tags name the base; keep only those for the base we name now
    tags = [
        t
        for t in (out.get("tags") or [])
        if isinstance(t, str) and not (t.startswith("base_model:") and t.rsplit(":", 1)[-1] != base_model)
    ]
    if kind == ADAPTER:
        out["library_name"] = "peft"
        wanted = ["lora"] + ([f"base_model:adapter:{base_model}"] if base_model else [])
    else:
        out["library_name"] = "transformers"
        wanted = ["merge"]
        if base_model:
            out["base_model_relation"] = "merge"
    if base_model:
        out["base_model"] = base_model
    out["tags"] = tags + [t for t in wanted if t not in tags]
    out["pipeline_tag"] = "text-generation"
    return out


def default_body(title: str, kind: str, base_model: str | None, details: str | None = None) -> str:
    """A new card's text: a title, what the folder is (linking a Hub base), then ``details``
    (how it was made), else a line saying it was published with adapterctl."""
    what = "A LoRA adapter" if kind == ADAPTER else "A model made by merging a LoRA adapter into"
    base = f" [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    if kind == ADAPTER:
        base = f" for{base}" if base else ""
    else:
        base = base or " its base model"
    return f"\n# {title}\n\n{what}{base}.\n\n{(details or _FOOTER).strip()}\n"


def render_card(
    existing: str | None, kind: str, base_model: str | None, *, title: str, details: str | None = None
) -> str:
    """The README text: ``existing`` (a local or remote card) with its metadata updated, or a new
    card titled ``title``. ``base_model`` must be a Hub id or None (see :func:`card_base`)."""
    import yaml

    if existing:
        meta, body = split_card(existing)
    else:
        meta, body = {}, default_body(title, kind, base_model, details)
    meta = card_metadata(meta, kind, base_model)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if not body.startswith("\n"):
        body = "\n" + body
    return f"---\n{front}---\n{body}"


def adapter_card(base_model: str | None, title: str, summary: str) -> tuple[str, list[str]]:
    """(README.md, notes) of an adapter folder adapterctl writes: ``summary`` says how it was
    made, then how to load it with PEFT."""
    base, notes = card_base(base_model)
    details = (
        f"{summary.strip()}\n\nLoad it with PEFT:\n\n```python\nfrom peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "path/to/this/adapter")\n```'
    )
    return render_card(None, ADAPTER, base, title=title, details=details), notes
