"""Byte ranges of files without a copy through Python: memory maps of one range, kernel copies
between files, early writeback (stdlib only).

Why: merge reads and writes the whole checkpoint. A positioned read into a fresh buffer costs a
page fault and a zeroed page per 4 kB, then a copy; a positioned write from it costs another copy.
Mapping the range instead lets the maths read the page cache's pages and write straight into the
output file's pages; a tensor no adapter changes is copied file to file inside the kernel
(``copy_file_range``), as ``cp`` does. Each map covers one tensor and is unmapped when its last
user drops it, so resident memory stays bounded by the tensors in flight, not the file size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os

PAGE = mmap.ALLOCATIONGRANULARITY
#: copy_file_range errors that mean "not between these two files": fall back to read + write
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                   getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_CHUNK = 1 << 27  # 128 MiB per kernel copy call (keeps Ctrl-C responsive)


def map_range(fd: int, offset: int, length: int, writable_file: bool) -> tuple[mmap.mmap, int]:
    """A map of ``[offset, offset + length)`` of ``fd`` and where the range starts in it.

    ``writable_file``: a shared map whose stores land in the file (an output). Otherwise a
    private copy-on-write map: the range reads as the file and may be written to without
    touching it (a tensor handed to code that might work in place)."""
    start = offset - offset % PAGE
    size = offset + length - start
    if writable_file:
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                      offset=start)
    else:
        m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                      offset=start)
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
    """Allocate the file's blocks up front, so a full disk is an error here (ENOSPC, EFBIG)
    rather than a SIGBUS when a mapped page is written later."""
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
