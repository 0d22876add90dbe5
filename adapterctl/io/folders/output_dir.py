"""Atomic output directories: write into a temporary folder beside the destination, move it into
place only when complete (stdlib only; the one helper every command that writes an output uses).

``with write_output_dir(dest, force=...) as tmp:`` yields the temporary folder. Leaving the block
normally renames it to ``dest`` (replacing an existing one only with ``force``); any exception,
KeyboardInterrupt included, removes it, so no partial ``dest`` is ever visible. A lock file beside
``dest`` keeps two runs from writing the same output at once.

A run killed outright (SIGKILL, power loss) cannot clean up: it leaves ``.<dest>.adapterctl-tmp-*``
(and, killed in the middle of a --force swap, ``.<dest>.adapterctl-old-*``). The next run into the
same ``dest`` holds the lock, so no live run owns those: it removes them, restoring the previous
output first when the swap was cut short.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapterctl.errors import OutputExistsError, OutputIOError

#: Headroom kept free on top of the planned output size (filesystem metadata, config files).
DISK_MARGIN_BYTES = 16 * 1024 * 1024


def io_error(path: Path | str, err: OSError, doing: str = "write") -> OutputIOError:
    """An OutputIOError naming the path and the cause, with a hint for the common causes."""
    hints = {
        errno.ENOSPC: "The disk is full: free some space or choose another --output.",
        errno.EFBIG: "The file size limit was reached (ulimit -f or the filesystem's limit).",
        errno.EDQUOT: "The disk quota is exceeded: free some space or choose another --output.",
        errno.EACCES: "Permission denied: choose an --output folder you can write to.",
        errno.EROFS: "The filesystem is read-only: choose another --output.",
    }
    reason = err.strerror or str(err)
    return OutputIOError(
        f"{path}: cannot {doing}: {reason}", hint=None if err.errno is None else hints.get(err.errno)
    )


def is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_destination(dest: Path, force: bool) -> None:
    """Refuse an existing non-empty destination unless ``force``; refuse a file at a parent's place."""
    if is_nonempty(dest) and not force:
        raise OutputExistsError(
            f"{dest}: already exists and is not empty",
            hint="Choose another --output, or pass --force to replace it.",
        )
    parent = dest.parent
    if parent.exists() and not parent.is_dir():
        raise OutputIOError(f"{parent}: is a file, cannot create {dest.name} inside it")


def check_free_space(dest: Path, needed_bytes: int) -> None:
    """Fail before writing anything when the destination's filesystem lacks the room."""
    probe = dest.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes + DISK_MARGIN_BYTES:
        raise OutputIOError(
            f"{dest}: not enough free disk space: {needed_bytes / 1e9:.2f} GB needed, "
            f"{free / 1e9:.2f} GB free on {probe}",
            hint="Free some space, or write the output to another disk with --output.",
        )


TEMP_PREFIX = "adapterctl-tmp-"
OLD_PREFIX = "adapterctl-old-"


@contextmanager
def lock_destination(dest: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``.<name>.lock`` beside ``dest`` for the whole run."""
    lock_path = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise io_error(lock_path, err, "create the lock file") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise OutputIOError(
                f"{dest}: another adapterctl run is writing this output (locked by {lock_path})",
                hint="Wait for it to finish, or choose another --output.",
            ) from err
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # locked a file the previous holder had just unlinked: lock the new one
    try:
        yield
    finally:
        _unlink_quietly(lock_path)  # unlinked while still held: a later run makes a fresh one
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def recover_leftovers(dest: Path) -> list[str]:
    """Remove what killed runs left beside ``dest`` (call with the lock held); returns the names.

    A ``--force`` swap cut short leaves ``dest`` missing and the previous output in an old-folder:
    that output is put back, so a killed run never loses the user's previous result."""
    pattern = f".{glob.escape(dest.name)}."
    found = sorted(dest.parent.glob(pattern + OLD_PREFIX + "*")) + sorted(
        dest.parent.glob(pattern + TEMP_PREFIX + "*")
    )
    for path in found:
        if (
            path.name.startswith(f".{dest.name}.{OLD_PREFIX}")
            and (path / "x").exists()
            and not (dest.exists() or dest.is_symlink())
        ):
            os.rename(path / "x", dest)
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in found]


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _replace_into(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest``; an existing ``dest`` (allowed by --force) is removed only after."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{OLD_PREFIX}", dir=dest.parent))
        os.rename(dest, old / "x")
    try:
        os.rename(tmp, dest)
    except BaseException:  # Ctrl-C between the two renames included
        if old is not None:
            os.rename(old / "x", dest)  # put the previous output back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prepare_destination(dest: Path, force: bool, needed_bytes: int) -> None:
    """Before anything is written: ``dest`` free (or ``force``), its folder made, the space there."""
    check_destination(dest, force)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io_error(dest.parent, err, "create the folder") from err
    check_free_space(dest, needed_bytes)


@contextmanager
def write_output_dir(dest: str | Path, force: bool = False, needed_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; rename it to ``dest`` when the block succeeds.

    Checks (before anything is written): ``dest`` empty or ``force``, ``needed_bytes`` of free space,
    no concurrent run on the same ``dest``. On any failure the temporary folder is removed.
    """
    dest = Path(dest).expanduser().absolute()
    _prepare_destination(dest, force, needed_bytes)
    with lock_destination(dest):
        recover_leftovers(dest)  # no live run owns them: we hold the lock
        check_destination(dest, force)  # again, now that no other run can change it
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{TEMP_PREFIX}", dir=dest.parent))
        except OSError as err:
            raise io_error(dest.parent, err, "create a temporary folder in") from err
        try:
            yield tmp
            _replace_into(tmp, dest)
        except OSError as err:
            raise io_error(dest, err) from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def write_output_file(dest: str | Path, force: bool = False, needed_bytes: int = 0) -> Iterator[Path]:
    """The single-file twin of :func:`write_output_dir` (a GGUF adapter): yield a temporary path
    beside ``dest``, rename it onto ``dest`` when the block succeeds, remove it on any failure."""
    dest = Path(dest).expanduser().absolute()
    if dest.is_dir():
        raise OutputExistsError(
            f"{dest}: is a folder, expected a file name",
            hint="Give the path of the file to write, e.g. out.gguf.",
        )
    _prepare_destination(dest, force, needed_bytes)
    with lock_destination(dest):
        check_destination(dest, force)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{TEMP_PREFIX}", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.replace(tmp, dest)
        except OSError as err:
            raise io_error(dest, err) from err
        finally:
            _unlink_quietly(tmp)
