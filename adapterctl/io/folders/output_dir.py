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

Nothing lost: every writer passes its command's inputs (:class:`Input`: the base, each adapter, a
prompts file, a GGUF or MLX source...), and an output that is, contains, or is inside one of them,
or inside the Hugging Face cache entry (``models--org--name``) an input was read from, is refused
before anything is written, with or without ``force`` (:func:`check_output`). ``force`` replaces an
old output, never an input. The one exception: a new *subfolder* of an adapter folder
(``nested=True``) is allowed, since every reader of an adapter (adapterctl, PEFT, vLLM, push's
default file set) reads only the files at the top of its folder; a file at the top, or an existing
file of the folder, is refused.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adapterctl.errors import OutputExistsError, OutputIOError, OutputIsInputError

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


# ----- nothing lost: an output never replaces an input ----------------------------------------
@dataclass(frozen=True)
class Input:
    """A file or folder the command reads, passed by every writer so its output cannot replace it.

    ``role`` names it in messages ("base model", "adapter", "--pissa-init adapter", "GGUF
    adapter"); ``shown`` is what the user typed (a Hub id). ``nested``: the input is read only
    from the files at the top of its folder (an adapter folder: adapterctl, PEFT, vLLM and push's
    default file set all read it so), so an output in a subfolder of it is allowed."""

    path: str | Path
    role: str
    shown: str | None = None
    nested: bool = False

    @classmethod
    def adapter(cls, path: str | Path, shown: str | None = None, role: str = "adapter") -> Input:
        return cls(path, role, shown, nested=True)

    @classmethod
    def model(cls, path: str | Path, shown: str | None = None, role: str = "base model") -> Input:
        return cls(path, role, shown)


#: the folder kinds of the Hugging Face cache (``models--org--name``)
CACHE_KINDS = ("models--", "datasets--", "spaces--")


def cache_entry(path: Path) -> Path | None:
    """The Hugging Face cache entry (``.../models--org--name``) ``path`` was read from, if any: a
    snapshot (``models--org--name/snapshots/<sha>``) or adapterctl's header stubs
    (``adapterctl/headers/models--org--name/<sha>``). The snapshot's files are links into the
    entry's ``blobs/``, so the whole entry is the input."""
    parts = path.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i].startswith(CACHE_KINDS) and (
            parts[i + 1] == "snapshots" or parts[i - 1 : i] == ("headers",)
        ):
            return Path(*parts[: i + 1])
    return None


def _ident(path: Path, follow: bool = True) -> tuple[int, int] | None:
    """(device, inode): the same folder under any spelling (symlinks, case, bind mounts)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _relation(out: Path, region: Path) -> tuple[str, Path | None] | None:
    """How ``out`` (absolute, its parent folders real) stands to the existing ``region``: "is",
    "contains", or "inside" with the entry of ``region`` that holds it; None when apart."""
    rid = _ident(region)
    if rid is None:
        return None
    chain = [out, *out.parents]
    for i, folder in enumerate(chain):
        if _ident(folder, follow=i > 0) == rid:  # ``out`` itself, a symlink, is what gets replaced
            return ("is", None) if i == 0 else ("inside", chain[i - 1])
    oid = _ident(out, follow=False)
    if oid is not None and any(_ident(up) == oid for up in region.parents):
        return ("contains", None)
    return None


def _fits_inside(out: Path, top: Path, is_file: bool) -> bool:
    """An output inside an adapter folder leaves the adapter's reads unchanged when it sits in a
    subfolder: ``top`` (its entry at the folder's top) is no file, and no new file at the top."""
    return not top.is_file() and not (is_file and top == out)


def check_output(
    dest: str | Path, inputs: Sequence[Input], flag: str = "--output", is_file: bool = False
) -> None:
    """Refuse ``dest`` when it is, contains, or is inside one of ``inputs`` (or the Hugging Face
    cache entry one was read from), symlinks and relative paths resolved; with or without
    --force. Inside an adapter folder (``Input.nested``) a subfolder is allowed (see
    :func:`_fits_inside`)."""
    given = Path(dest).expanduser()
    absolute = given.absolute()
    if absolute.name in ("", ".."):  # "x/.." names a folder, not an entry of x
        absolute = _real(absolute)
    # the entry a write replaces (a symlink there is replaced, not followed), and where it points
    outs = dict.fromkeys([_real(absolute.parent) / absolute.name, _real(absolute)])
    for inp in inputs:
        real = _real(inp.path)
        entry = cache_entry(real)
        for out in outs:
            found = _relation(out, real)
            if found and found[0] == "inside" and inp.nested:
                assert found[1] is not None  # "inside" always names the entry that holds ``out``
                if _fits_inside(out, found[1], is_file):
                    found = None
            in_entry = _relation(out, entry) if entry is not None else None
            if found and (found[0] != "contains" or not in_entry):  # the input itself first
                raise _refusal(given, flag, inp, real, entry=None, how=found[0], top=found[1])
            hit = in_entry or found
            if hit:  # the cache entry it was read from (its blobs, other snapshots)
                how, top = hit
                raise _refusal(given, flag, inp, real, entry=entry if in_entry else None, how=how, top=top)


def _refusal(
    given: Path, flag: str, inp: Input, real: Path, *, entry: Path | None, how: str, top: Path | None
) -> OutputIsInputError:
    name = inp.shown or str(inp.path)
    if str(real) not in (name, str(Path(name).expanduser().absolute())):
        name += f" ({real})"
    what = f"the {inp.role} {name}"
    if entry is not None:
        what = f"the Hugging Face cache entry {entry} of {what}"
    verb = {"is": "is", "contains": "contains", "inside": "is inside"}[how]
    detail = ""
    if how == "inside" and entry is None and inp.nested:
        assert top is not None  # "inside" always names the entry that holds the output
        detail = (
            f": it would replace the adapter's file {top.name}"
            if top.is_file()
            else f": a new file at the top of the folder, beside the adapter's own ({top.name})"
        )
    elif how == "inside" and entry is None and real.is_dir():
        detail = ": a model folder is read as a whole (merge copies its other files and subfolders)"
    hint = "Write the output elsewhere: --force replaces an old output, never an input of the command."
    if how == "inside" and inp.nested and cache_entry(real) is None:
        hint += f" Inside an adapter folder only a subfolder may be written (e.g. {Path(inp.path) / 'out'}/)."
    return OutputIsInputError(f"{flag} {given}: {verb} {what}, an input of this command{detail}", hint=hint)


def replaces(dest: str | Path | None) -> list[dict]:
    """What writing ``dest`` would replace, for dry runs and plans: its absolute path and whether
    something is there now (``[]`` when there is no output)."""
    if dest is None:
        return []
    path = Path(dest).expanduser().absolute()
    return [{"path": str(path), "exists": path.exists() or path.is_symlink()}]


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
def write_output_dir(
    dest: str | Path,
    force: bool = False,
    needed_bytes: int = 0,
    *,
    inputs: Sequence[Input],
    flag: str = "--output",
) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; rename it to ``dest`` when the block succeeds.

    Checks (before anything is written): ``dest`` is none of the command's ``inputs`` (required:
    no writer may forget them; ``flag`` names the output in the refusal), ``dest`` empty or
    ``force``, ``needed_bytes`` of free space, no concurrent run on the same ``dest``. On any
    failure the temporary folder is removed.
    """
    check_output(dest, inputs, flag)
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
def write_output_file(
    dest: str | Path,
    force: bool = False,
    needed_bytes: int = 0,
    *,
    inputs: Sequence[Input],
    flag: str = "--output",
) -> Iterator[Path]:
    """The single-file twin of :func:`write_output_dir` (a GGUF adapter): yield a temporary path
    beside ``dest``, rename it onto ``dest`` when the block succeeds, remove it on any failure."""
    check_output(dest, inputs, flag, is_file=True)
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
