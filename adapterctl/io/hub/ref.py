"""What names a Hub repository: ids, ``@revision`` suffixes, the options every Hub call takes and
the endpoint they go to. Stdlib only; the one module both :mod:`hub` and :mod:`resolve` build on."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/%]+)?$")


@dataclass(frozen=True)
class HubOptions:
    revision: str | None = None
    token: str | None = field(default=None, repr=False)  # never shown, not even in a repr
    endpoint: str | None = None  # None: HF_ENDPOINT at call time, else huggingface.co
    progress: bool = True  # huggingface_hub's download bars on stderr
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


def looks_like_hub_id(ref: str) -> bool:
    repo = ref.split("@", 1)[0]
    return (
        bool(_HUB_ID.match(ref))
        and not ref.startswith((".", "/", "~"))
        and "--" not in repo
        and ".." not in repo
    )  # the Hub refuses both in repo ids


def split_revision(ref: str, revision: str | None) -> tuple[str, str | None]:
    if "@" in ref:
        repo, _, rev = ref.partition("@")
        return repo, revision or rev
    return ref, revision


def endpoint_of(hub) -> str:
    return (
        getattr(hub, "endpoint", None) or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    ).rstrip("/")
