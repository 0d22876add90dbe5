"""Prompt sources for ``generate``: ``--prompt`` texts, a prompts file (plain text or JSONL), stdin.

A plain text file holds one prompt per line (blank lines skipped). A JSONL file (``.jsonl``
suffix, or every non-blank line a JSON object) holds one object per line with ``prompt`` and
optionally ``adapter`` (an adapter name, path or Hub id; ``null`` or ``"base"`` for the base
model alone), ``max_new_tokens`` and ``id``. Pure Python: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError

#: Adapter key meaning "the base model alone" (the name the engine uses for it, too).
BASE_KEY = "__base__"
#: What a JSONL ``adapter`` field may say to mean the base model alone.
BASE_ALIASES = {None, "", "base", BASE_KEY}
#: A JSONL prompt without an ``adapter`` field uses the ``--adapter`` options of the command line.
DEFAULT_KEY = None


@dataclass(frozen=True)
class PromptSpec:
    """One prompt to complete. ``adapter``: DEFAULT_KEY (use the command line's adapters),
    BASE_KEY, or an adapter reference as the user wrote it."""

    id: str
    prompt: str
    adapter: str | None = DEFAULT_KEY
    max_new_tokens: int | None = None


def collect_prompts(
    texts: Iterable[str] = (), file: str | Path | None = None, stdin: TextIO | None = None
) -> list[PromptSpec]:
    """All prompts in order: ``--prompt`` texts, then the file, then ``stdin`` (the caller passes
    it for ``-`` or ``--prompts -``; text or JSONL, guessed from content). Ids default to the
    prompt's position (``"0"``, ``"1"``...); duplicate ids are refused."""
    specs: list[PromptSpec] = [PromptSpec(id="", prompt=t) for t in texts]
    if file is not None and str(file) != "-":  # "-": the caller passes stdin
        specs += parse_prompt_lines(_read_text(Path(file)), str(file), jsonl=_is_jsonl_name(file))
    if stdin is not None:
        specs += parse_prompt_lines(stdin.read(), "<stdin>")
    if not specs:
        raise UsageError(
            "no prompts given",
            hint="Pass --prompt TEXT, --prompts FILE (text or JSONL), or '-' to read stdin.",
        )
    return _number(specs)


def parse_prompt_lines(text: str, source: str, jsonl: bool | None = None) -> list[PromptSpec]:
    """Prompts from a text (one per line) or JSONL document; ``jsonl=None`` guesses from content."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if jsonl is None:
        jsonl = bool(lines) and all(line.lstrip().startswith("{") for _, line in lines)
    if not jsonl:
        return [PromptSpec(id="", prompt=line) for _, line in lines]
    return [_parse_jsonl_line(line, source, n) for n, line in lines]


def _parse_jsonl_line(line: str, source: str, lineno: int) -> PromptSpec:
    where = f"{source}:{lineno}"
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as err:
        raise InvalidAdapterError(
            f"{where}: not valid JSON ({err.msg})",
            hint="Each line of a JSONL prompts file is one JSON object.",
        ) from err
    except RecursionError as err:  # json raises it for deep nesting, an internal error otherwise
        raise InvalidAdapterError(f"{where}: JSON nested too deeply") from err
    if not isinstance(doc, dict):
        raise InvalidAdapterError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    prompt = doc.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidAdapterError(
            f"{where}: needs a string 'prompt'",
            hint='Write {"prompt": "...", "adapter": "...", "id": "..."}.',
        )
    unknown = sorted(set(doc) - {"prompt", "adapter", "max_new_tokens", "id"})
    if unknown:
        raise InvalidAdapterError(
            f"{where}: unknown keys {', '.join(unknown)}",
            hint="Allowed keys: prompt, adapter, max_new_tokens, id.",
        )
    return PromptSpec(
        id=_field_id(doc.get("id"), where),
        prompt=prompt,
        adapter=_field_adapter(doc, where),
        max_new_tokens=_field_max_new(doc.get("max_new_tokens"), where),
    )


def _field_id(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidAdapterError(f"{where}: 'id' must be a string or an integer, got {value!r}")
    return str(value)


def _field_adapter(doc: dict, where: str) -> str | None:
    if "adapter" not in doc:
        return DEFAULT_KEY
    value = doc["adapter"]
    if value is not None and not isinstance(value, str):  # before `in`: a list is unhashable
        raise InvalidAdapterError(f"{where}: 'adapter' must be a string or null, got {value!r}"[:300])
    return BASE_KEY if value in BASE_ALIASES else value


def _field_max_new(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidAdapterError(f"{where}: 'max_new_tokens' must be a positive integer, got {value!r}")
    return value


def _number(specs: list[PromptSpec]) -> list[PromptSpec]:
    out, seen = [], set()
    for i, s in enumerate(specs):
        pid = s.id or str(i)
        if pid in seen:
            raise UsageError(f"prompt id {pid!r} is used twice", hint="Give every prompt its own 'id'.")
        seen.add(pid)
        out.append(PromptSpec(pid, s.prompt, s.adapter, s.max_new_tokens))
    return out


def _is_jsonl_name(path: str | Path) -> bool | None:
    return True if str(path).endswith((".jsonl", ".ndjson")) else None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise NotFoundError(f"{path}: no such prompts file", hint="Check the path given to --prompts.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidAdapterError(f"{path}: is not UTF-8 text") from err
    except OSError as err:
        raise NotFoundError(f"{path}: cannot be read ({err.strerror})") from err


def adapter_lookup(adapters: Iterable[tuple[str, str, str | Path]]) -> Callable[[str], str | None]:
    """What a prompt's ``adapter`` field names, as the name of a loaded adapter: ``adapters`` are
    (name, what was typed for it, its folder); a field may give any of the three (the folder also
    as another spelling of the same path). Names win over paths that happen to look the same.
    The one lookup of our engine's router and of ``generate --engine vllm``."""
    entries = list(adapters)
    table: dict[str, str] = {}
    for name, ref, folder in entries:
        for key in (ref, str(folder), str(Path(folder).resolve())):
            table.setdefault(key, name)
    table.update({name: name for name, _, _ in entries})

    def lookup(ref: str) -> str | None:
        if ref in table:
            return table[ref]
        path = Path(ref).expanduser()
        return table.get(str(path.resolve())) if path.exists() else None

    return lookup


def named_adapter(spec: PromptSpec, lookup: Callable[[str], str | None]) -> str:
    """The loaded adapter a prompt names (not DEFAULT_KEY nor BASE_KEY); a usage error when none."""
    name = lookup(spec.adapter) if spec.adapter is not None else None
    if name is None:
        raise UsageError(
            f"prompt {spec.id!r} names adapter {spec.adapter!r}, which is not loaded",
            hint="Name an adapter given with --adapter, by name or path.",
        )
    return name
