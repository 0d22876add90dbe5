"""mkdocs hook: the transcript markers in a ```console fence's info string (tests/docs reads them:
``requires=vllm``, ``setup=moe``, ``norun="..."``) become a plain console block with a title, since
Markdown's fences take a language and known options only."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^(`{3,})console[ \t]+(\S.*)$", re.M)
_OPTION = re.compile(r'(\w[\w.-]*)=("[^"]*"|\S+)')


def _title(info: str) -> str:
    options = {k: v.strip('"') for k, v in _OPTION.findall(info)}
    if "norun" in options:
        return "illustration (not run by the tests)"
    if "requires" in options:
        return "needs " + ", ".join(options["requires"].split(","))
    return ""


def on_page_markdown(markdown: str, **_) -> str:
    def plain(m: re.Match) -> str:
        title = _title(m.group(2))
        return f'{m.group(1)}console title="{title}"' if title else f"{m.group(1)}console"

    return _FENCE.sub(plain, markdown)
