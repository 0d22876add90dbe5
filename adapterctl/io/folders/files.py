"""Small, careful readers for the JSON files adapters and models carry."""

from __future__ import annotations

import json
from pathlib import Path

from adapterctl.errors import InvalidAdapterError, NotFoundError

#: Configs and weight indexes are kilobytes (a 1T-parameter index: a few MB); refusing anything
#: larger before reading keeps memory bounded on a hostile or corrupt file.
MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """Read ``path`` as a JSON object, turning every failure into an AdapterctlError naming the file."""
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_JSON_BYTES:
            raise InvalidAdapterError(
                f"{p}: {what} is {p.stat().st_size} bytes, more than the "
                f"{MAX_JSON_BYTES // 2**20} MiB a JSON config can sensibly be",
                hint="The file is corrupt or not what its name says.",
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise NotFoundError(f"{p}: {what} not found") from err
    except IsADirectoryError as err:
        raise InvalidAdapterError(f"{p}: expected a {what}, found a directory") from err
    except UnicodeDecodeError as err:
        raise InvalidAdapterError(f"{p}: {what} is not UTF-8 text") from err
    except OSError as err:
        raise InvalidAdapterError(f"{p}: cannot read {what}: {err.strerror}") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidAdapterError(
            f"{p}: {what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
            hint="Fix or regenerate the file.",
        ) from err
    except RecursionError as err:
        raise InvalidAdapterError(f"{p}: {what} is nested too deeply") from err
    if not isinstance(doc, dict):
        raise InvalidAdapterError(
            f"{p}: {what} must hold a JSON object, found {type(doc).__name__}",
            hint="Fix or regenerate the file.",
        )
    return doc
