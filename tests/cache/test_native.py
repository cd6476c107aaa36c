"""Tests for agent/cache/native.py and the compiled agent.cache._pollen_io module, on real files:
the file helpers, the aligned buffers and their pool, and the module's version check.

The engines built on these bindings are tested in test_engines.py.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from agent.cache import native

A = native.ALIGNMENT
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chunks"


# -- aligned memory ------------------------------------------------------------------------


def test_alloc_buffer_is_aligned_and_padded() -> None:
    for n in (0, 1, 4095, 4096, 4097, 3 * MiB + 5):
        view = native.alloc_buffer(n)
        assert len(view) == n and not view.readonly
        pointer = native.ffi.from_buffer(view.obj)
        assert native.address_of(pointer) % A == 0
        assert len(view.obj) == max(A, native.round_up(n))
        assert bytes(memoryview(view.obj)[n:]) == bytes(len(view.obj) - n)
        native.ffi.release(pointer)
    with pytest.raises(ValueError):
        native.alloc_buffer(-1)


def test_buffers_are_recycled() -> None:
    pool = native.BufferPool(max_idle_bytes=2 * A)
    first = pool.take(100)
    address = native.address_of(native.ffi.from_buffer(first.obj))
    del first
    again = pool.take(A)  # the same rounded size: the same memory
    assert native.address_of(native.ffi.from_buffer(again.obj)) == address
    assert pool.statistics()["reused"] == 1
    held = [pool.take(A) for _ in range(4)]
    del held, again
    assert pool.statistics()["idle_bytes"] == 2 * A  # the rest were unmapped


def test_buffers_of_sizes_in_one_class_share_mappings() -> None:
    """A layer's last chunk (any size) and a head chunk (half a chunk) reuse a whole chunk's
    mapping, and the view each gets covers only its own pages (an O_DIRECT write rounds to
    those); a mapping goes back to its own class."""
    pool = native.BufferPool(max_idle_bytes=8 * MiB)
    chunk = pool.take(4 * MiB)
    address = native.address_of(native.ffi.from_buffer(chunk.obj))
    del chunk
    last = pool.take(3 * MiB + 5)
    assert native.address_of(native.ffi.from_buffer(last.obj)) == address
    assert len(last) == 3 * MiB + 5 and len(last.obj) == native.round_up(3 * MiB + 5)
    assert pool.statistics()["created"] == 1 and pool.statistics()["reused"] == 1
    del last
    head = pool.take(2 * MiB)  # the class below: a head chunk takes a chunk's mapping
    assert native.address_of(native.ffi.from_buffer(head.obj)) == address
    small = pool.take(MiB)  # two classes below: a new mapping
    assert pool.statistics()["created"] == 2
    assert pool.statistics()["in_use_bytes"] == 4 * MiB + MiB
    del head, small
    assert pool.statistics()["idle_bytes"] == 5 * MiB  # each back in its own class
    assert pool.take(4 * MiB) and pool.take(MiB) and pool.statistics()["created"] == 2
    sizes = (0, 1, A, A + 1, 4 * MiB, 4 * MiB + 1)
    assert [native.size_class(n) for n in sizes] == [A, A, A, 2 * A, 4 * MiB, 8 * MiB]


# -- files ---------------------------------------------------------------------------------


def test_open_in_missing_directory_raises_enoent(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "file"
    with pytest.raises(FileNotFoundError) as info:
        native.open_file(missing, write=True, create=True)
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror.startswith("open: ")
    assert info.value.filename == str(missing)


def test_open_flags(path: Path) -> None:
    fd = native.open_file(path, write=True, create=True)
    try:
        assert not os.get_inheritable(fd)  # O_CLOEXEC
        assert os.fstat(fd).st_mode & 0o777 == native.FILE_MODE
    finally:
        native.close_file(fd)
    # Re-opening with create never truncates.
    path.write_bytes(b"keep")
    fd = native.open_file(path, write=True, create=True)
    native.close_file(fd)
    assert path.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="create"):
        native.open_file(path, write=False, create=True)


def test_open_direct(path: Path) -> None:
    """O_DIRECT reaches open(2); some filesystems (older tmpfs) refuse it with EINVAL."""
    try:
        fd = native.open_file(path, write=True, create=True, direct=True)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return
    try:
        if sys.platform == "linux":
            import fcntl

            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        native.close_file(fd)


def test_close_bad_fd_raises(path: Path) -> None:
    fd = native.open_file(path, write=True, create=True)
    native.close_file(fd)
    with pytest.raises(OSError) as info:
        native.close_file(fd)
    assert info.value.errno == errno.EBADF
    assert info.value.strerror.startswith("close: ")


def test_allocate_and_fsync(path: Path) -> None:
    fd = native.open_file(path, write=True, create=True)
    try:
        native.allocate(fd, 0, 1 << 20)
        assert os.fstat(fd).st_size == 1 << 20
        native.allocate(fd, 0, 0)  # nothing to reserve
        native.fsync_file(fd)
        with pytest.raises(ValueError):
            native.allocate(fd, -1, 10)
    finally:
        native.close_file(fd)


# -- the native module's version -----------------------------------------------------------


def test_native_version_matches() -> None:
    assert native.native_version() == native.EXPECTED_NATIVE_VERSION
    native.check_native_version(native.native_version())


def test_header_and_python_agree_on_the_version() -> None:
    """The macro in the header, the compiled module and the Python constant move together."""
    header = (ROOT / "native" / "pollen_io.h").read_text()
    assert f"#define POLLEN_IO_VERSION {native.EXPECTED_NATIVE_VERSION}\n" in header


def test_every_exported_symbol_has_the_prefix() -> None:
    names = [name for name in dir(native.lib) if not name.startswith("__")]
    assert names
    assert all(name.startswith(("pollen_", "POLLEN_")) for name in names), names


def test_stale_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "EXPECTED_NATIVE_VERSION", native.native_version() + 1)
    with pytest.raises(ImportError, match="make build"):
        native.check_native_version(native.native_version())


def test_stale_module_is_refused_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading native.py against a module of another version fails, naming the fix."""

    class StaleLib:
        @staticmethod
        def pollen_version() -> int:
            return native.EXPECTED_NATIVE_VERSION - 1

    class StaleModule:
        ffi = native.ffi
        lib = StaleLib()

    monkeypatch.setitem(sys.modules, "agent.cache._pollen_io", StaleModule())
    spec = importlib.util.spec_from_file_location("_native_probe", native.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"stale build.*run `make build`"):
        spec.loader.exec_module(module)


def test_missing_native_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading native.py when agent.cache._pollen_io cannot be imported says to run make build."""
    monkeypatch.setitem(sys.modules, "agent.cache._pollen_io", None)
    spec = importlib.util.spec_from_file_location("_native_probe", native.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="make build"):
        spec.loader.exec_module(module)
