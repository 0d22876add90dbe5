"""The README model card pushed with an adapter or a merged model (spec section 9.2).

PEFT's ``save_pretrained`` front matter is ``library_name: peft``, ``base_model``, ``tags``
(``lora``, ``base_model:adapter:<base>``, ...) and ``pipeline_tag: text-generation``; a merged model
is a transformers model whose Hub relation to its base is ``merge`` (``base_model_relation``). We
update those keys in the user's card and keep every other key and all of the body text. Rendering
is idempotent (rendering a rendered card changes nothing), so an unchanged folder pushes an
unchanged README and the Hub client skips the commit.
"""

from __future__ import annotations

import re
from pathlib import Path

from adapterctl.errors import InvalidAdapterError

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_model_id(name: str | None) -> bool:
    """A Hub model id (``user/repo`` or a canonical ``repo``), not a local path (an existing
    folder such as ``examples/tiny-base`` is a path even though it reads like an id)."""
    return (bool(name) and bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))
            and not Path(name).exists())


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
        raise InvalidAdapterError("README.md: the YAML front matter is not a mapping",
                                  hint="Fix the block between the --- lines, or remove it.")
    return meta, text[m.end():]


def card_metadata(meta: dict, kind: str, base_model: str | None) -> dict:
    """``meta`` with the keys PEFT (adapter) or transformers (merged model) would write."""
    out = dict(meta)
    bases = out.get("base_model")
    bases = bases if isinstance(bases, list) else [bases]
    if not all(isinstance(b, str) and looks_like_model_id(b) for b in bases):
        out.pop("base_model", None)  # PEFT writes local paths here; the Hub wants model ids
    # base_model:<relation>:<id> tags name the base; keep only those for the base we name now
    tags = [t for t in (out.get("tags") or []) if isinstance(t, str)
            and not (t.startswith("base_model:") and t.rsplit(":", 1)[-1] != base_model)]
    if kind == "adapter":
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


def default_body(repo_id: str, kind: str, base_model: str | None) -> str:
    what = "A LoRA adapter" if kind == "adapter" else "A model made by merging a LoRA adapter into"
    base = f" [{base_model}](https://huggingface.co/{base_model})" if base_model else ""
    if kind == "adapter":
        base = f" for{base}" if base else ""
    else:
        base = base or " its base model"
    return (f"\n# {repo_id}\n\n{what}{base}.\n\n"
            "Published with [adapterctl](https://github.com/adapterctl/adapterctl).\n")


def render_card(existing: str | None, repo_id: str, kind: str, base_model: str | None) -> str:
    """The README text to push: ``existing`` (local or remote card) updated, or a new card."""
    import yaml

    meta, body = split_card(existing) if existing else ({}, default_body(repo_id, kind, base_model))
    meta = card_metadata(meta, kind, base_model)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if not body.startswith("\n"):
        body = "\n" + body
    return f"---\n{front}---\n{body}"
