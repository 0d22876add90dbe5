"""io/safetensors/file_pages.py: byte ranges of files: private maps that read as the file and
never write to it, kernel copies (any offsets, a short source), space reserved up front."""

from __future__ import annotations

import os

from adapterctl.io.safetensors import file_pages
from adapterctl.io.safetensors.file_pages import PAGE, copy_range, map_range, prefetch_folder, reserve


def _fd(path, flags=os.O_RDONLY):
    return os.open(path, flags)


def test_a_map_reads_the_range_and_writes_stay_private(tmp_path):
    data = bytes(range(256)) * (3 * PAGE // 256)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = _fd(path)
    try:
        offset, length = PAGE + 17, 1000
        m, start = map_range(fd, offset, length)
        assert m[start : start + length] == data[offset : offset + length]
        m[start] = (m[start] + 1) % 256  # copy-on-write: the file keeps its byte
        m.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_copy_range_at_offsets_and_past_the_end(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"0123456789")
    dst.write_bytes(b"." * 12)
    s, d = _fd(src), _fd(dst, os.O_RDWR)
    try:
        assert copy_range(s, 2, d, 5, 4) == 4
        assert copy_range(s, 8, d, 0, 10) == 2  # the source ends first
    finally:
        os.close(s)
        os.close(d)
    assert dst.read_bytes() == b"89...2345..."


def test_copy_range_without_the_kernel_call(tmp_path, monkeypatch):
    """Where copy_file_range is missing (or refused), read + write gives the same bytes."""
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(5000))
    dst.write_bytes(b"")
    s, d = _fd(src), _fd(dst, os.O_RDWR)
    try:
        assert copy_range(s, 100, d, 0, 4900) == 4900
    finally:
        os.close(s)
        os.close(d)
    assert dst.read_bytes() == src.read_bytes()[100:]


def test_reserve_sizes_the_file(tmp_path):
    path = tmp_path / "out"
    fd = _fd(path, os.O_RDWR | os.O_CREAT)
    try:
        reserve(fd, 3 * PAGE + 5)
    finally:
        os.close(fd)
    assert path.stat().st_size == 3 * PAGE + 5


def test_prefetch_reads_shards_in_the_background_and_ignores_no_folder(tmp_path):
    (tmp_path / "model-1.safetensors").write_bytes(b"x" * 100)
    thread = prefetch_folder(str(tmp_path))
    if hasattr(os, "posix_fadvise"):
        thread.join(10)
        assert not thread.is_alive()
    assert prefetch_folder(str(tmp_path / "nowhere")) is None
    assert file_pages.PREFETCH_BYTES > 0
