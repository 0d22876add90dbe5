"""The text ``eval`` scores: ``--data`` (JSONL with ``text``, or ``prompt`` + ``completion``; or plain
text cut into ``--ctx`` token windows) as token sequences, each with the first position it scores.

Tokenized as ``tokenizer(text)`` does by default (special tokens as the tokenizer adds them). For
``prompt`` + ``completion`` the prompt is tokenized as ``tokenizer(prompt)``, the completion as
``tokenizer(completion, add_special_tokens=False)``, and only the completion's tokens are scored
(TRL's completion-only loss draws the same line). Pure Python: the tokenizer is passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError, UsageError


@dataclass(frozen=True)
class Sequence:
    """Token ids and the index of the first token that is scored (>= 1: token i is predicted by
    position i - 1). ``id`` names the record (its line, or its window) in messages."""

    ids: tuple[int, ...]
    scored_from: int
    id: str = ""

    @property
    def positions(self) -> int:
        return max(0, len(self.ids) - self.scored_from)


@dataclass(frozen=True)
class Record:
    """One piece of text to score: ``text`` alone (every token scored) or a prompt and its completion."""

    id: str
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


def read_records(path: str | Path) -> list[Record]:
    """The records of a JSONL file (``.jsonl``, or every non-blank line a JSON object) or of a plain
    text file (one record: the whole text)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"{path}: no such data file", hint="Pass --data FILE (JSONL or plain text).")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidAdapterError(f"{path}: cannot read the data file as UTF-8 text ({err})") from err
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UsageError(f"{path}: the data file is empty", hint="Give it text, or JSONL lines.")
    jsonl = p.suffix == ".jsonl" or all(line.lstrip().startswith("{") for _, line in lines)
    if not jsonl:
        return [Record(id=p.name, text=text)]
    return [_jsonl_record(line, f"{path}:{n}") for n, line in lines]


def _jsonl_record(line: str, where: str) -> Record:
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        raise InvalidAdapterError(f"{where}: not valid JSON", hint="One JSON object per line.") from err
    if not isinstance(doc, dict):
        raise InvalidAdapterError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    text, prompt, completion = doc.get("text"), doc.get("prompt"), doc.get("completion")
    if isinstance(text, str) and text and prompt is None and completion is None:
        return Record(id=where, text=text)
    if isinstance(prompt, str) and isinstance(completion, str) and completion and text is None:
        return Record(id=where, prompt=prompt, completion=completion)
    raise InvalidAdapterError(
        f"{where}: expected a non-empty string `text`, or `prompt` and a non-empty `completion`",
        hint='Write {"text": "..."} or {"prompt": "...", "completion": "..."} on each line.',
    )


def tokenize_records(records: list[Record], tokenizer, ctx: int) -> list[Sequence]:
    """Token sequences of at most ``ctx`` tokens: a long ``text`` is cut into consecutive windows
    (each scores every token after its first); a prompt + completion that is too long keeps its
    last ``ctx`` tokens (the completion first)."""
    if ctx < 2:
        raise UsageError(f"--ctx must be at least 2 tokens, got {ctx}")
    out: list[Sequence] = []
    for rec in records:
        if rec.text is not None:
            ids = list(tokenizer(rec.text)["input_ids"])
            for start in range(0, len(ids), ctx):
                window = ids[start : start + ctx]
                if len(window) >= 2:
                    out.append(Sequence(tuple(window), 1, f"{rec.id}@{start}"))
        else:
            prompt = list(tokenizer(rec.prompt)["input_ids"])
            done = list(tokenizer(rec.completion, add_special_tokens=False)["input_ids"])
            ids = (prompt + done)[-ctx:]
            first = max(1, len(ids) - len(done))
            if len(ids) > first:
                out.append(Sequence(tuple(ids), first, rec.id))
    if not out:
        raise UsageError(
            "the data holds no token to score (every text is shorter than two tokens)",
            hint="Give longer texts.",
        )
    return out
