"""Byte ranges of files without a copy through Python: memory maps of one range, kernel copies
between files, early writeback (stdlib only).

Why: merge reads and writes the whole checkpoint. A positioned read into a fresh buffer costs a
page fault and a zeroed page per 4 kB, then a copy; a positioned write from it costs another copy.
Mapping the range instead lets the maths read the page cache's own pages (each map covers one
tensor and is unmapped when its last user drops it, so resident memory stays bounded by the
tensors in flight, not the file size); a tensor no adapter changes is copied file to file inside
the kernel (``copy_file_range``), as ``cp`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import threading

PAGE = mmap.ALLOCATIONGRANULARITY
#: copy_file_range errors that mean "not between these two files": fall back to read + write
_NO_KERNEL_COPY = {
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EOPNOTSUPP,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
}
_CHUNK = 1 << 27  # 128 MiB per kernel copy call (keeps Ctrl-C responsive)


def map_range(fd: int, offset: int, length: int) -> tuple[mmap.mmap, int]:
    """A private copy-on-write map of ``[offset, offset + length)`` of ``fd`` and where the range
    starts in it: it reads as the file (the page cache's own pages, no copy) and may be written
    to without touching the file (a tensor handed to code that might work in place)."""
    start = offset - offset % PAGE
    m = mmap.mmap(
        fd,
        offset + length - start,
        flags=mmap.MAP_PRIVATE,
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
        offset=start,
    )
    return m, offset - start


def copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int:
    """Copy ``length`` bytes between two files in the kernel (``copy_file_range``; read + write
    where the kernel cannot); returns the bytes copied, fewer when the source ends first."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < length:
        n = min(_CHUNK, length - done)
        if kernel:
            try:
                got = os.copy_file_range(src, dst, n, src_offset + done, dst_offset + done)
            except OSError as err:
                if err.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(src, n, src_offset + done)
            got = len(data)
            view = memoryview(data)
            while view:
                w = os.pwrite(dst, view, dst_offset + done + got - len(view))
                view = view[w:]
        if got == 0:
            break
        done += got
    return done


def _sync_file_range():
    """libc's sync_file_range (Linux), or None."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = lib.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a finished range to disk now (asynchronously), so disk
    writes overlap the rest of the work and the final fsync has little left to wait for.
    A hint: a system without sync_file_range just writes back later."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def will_need(fd: int, offset: int, length: int) -> None:
    """Start reading a range into the page cache ahead of its use (a hint)."""
    if hasattr(os, "posix_fadvise") and length > 0:
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def reserve(fd: int, length: int) -> None:
    """Allocate the file's blocks up front, so a full disk is an error before any tensor is
    computed (ENOSPC, EFBIG), and the file is laid out in one piece."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, length)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    # no fallocate here (macOS, some filesystems): the free-space check before writing is
    # what is left
    os.ftruncate(fd, length)


#: how much of a base ``prefetch_folder`` asks for: about what the disk reads while torch imports
PREFETCH_BYTES = 2_000_000_000


def prefetch_folder(
    folder: str, suffix: str = ".safetensors", limit: int = PREFETCH_BYTES
) -> threading.Thread | None:
    """Start reading the first ``limit`` bytes of a folder's weight files (in name order, as
    shards are read) into the page cache, on a daemon thread, while this process goes on
    (importing torch takes about a second: the disk can work meanwhile). A hint; None when
    ``folder`` is not a local folder."""
    if not os.path.isdir(folder) or not hasattr(os, "posix_fadvise"):
        return None
    names = sorted(n for n in os.listdir(folder) if n.endswith(suffix))

    def run() -> None:
        left = limit
        for name in names:
            if left <= 0:
                return
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                size = os.fstat(fd).st_size
                will_need(fd, 0, min(size, left))
                left -= size
            finally:
                os.close(fd)

    thread = threading.Thread(target=run, name="adapterctl-prefetch", daemon=True)
    thread.start()
    return thread
