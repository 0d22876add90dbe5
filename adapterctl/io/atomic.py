"""Atomic output directories: write beside the destination, rename into place when complete.

``with atomic_output_dir(dest, force) as tmp:`` yields an empty temporary folder named
``.<dest name>.adapterctl-tmp-<pid>`` in dest's parent (same filesystem, so the final rename is
atomic). On success an existing ``dest`` (allowed only with ``force``) is swapped out and removed;
on any exception, KeyboardInterrupt included, the temporary folder is removed and ``dest`` is left
as it was. Generic: knows nothing about adapters.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapterctl.errors import OutputExistsError, OutputIOError


def temp_dir_for(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.adapterctl-tmp-{os.getpid()}"


def _check_dest(dest: Path, force: bool) -> None:
    if not dest.exists():
        return
    if not dest.is_dir():
        raise OutputExistsError(f"{dest}: exists and is not a directory",
                                hint="Choose another output path.")
    if any(dest.iterdir()) and not force:
        raise OutputExistsError(f"{dest}: already exists and is not empty",
                                hint="Choose another output, or pass --force to replace it.")


def _io_error(path: Path, err: OSError) -> OutputIOError:
    what = {errno.ENOSPC: "disk full", errno.EACCES: "permission denied",
            errno.EROFS: "read-only filesystem"}.get(err.errno, err.strerror or str(err))
    return OutputIOError(f"{path}: cannot write output ({what})",
                         hint="Free space or pick a writable output folder.")


def _replace(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an existing dest is renamed aside first, then deleted."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.adapterctl-old-{os.getpid()}"
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if old is not None:  # put the previous output back
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_output_dir(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``dest`` when the block completes without error."""
    dest = Path(dest).expanduser()
    _check_dest(dest, force)
    tmp = temp_dir_for(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left over by a killed run with our pid
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as err:
        raise _io_error(dest.parent, err) from err
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _replace(tmp, dest)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _io_error(dest, err) from err
        raise
