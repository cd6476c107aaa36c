"""Tests for agent/native.py and the compiled agent._pollen_io module, on real temp files."""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import native


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chunks"


@pytest.fixture
def fd(path: Path) -> Iterator[int]:
    fd = native.open_file(path, write=True, create=True)
    yield fd
    native.close_file(fd)


@pytest.fixture
def engine() -> native.PreadEngine:
    return native.open_engine("pread", 8)


async def test_known_data_at_known_offsets(fd: int, path: Path, engine: native.PreadEngine) -> None:
    pieces = {0: b"head", 4096: b"middle" * 100, 1 << 20: b"tail"}
    for offset, data in pieces.items():
        await engine.write(fd, offset, data)
    for offset, data in pieces.items():
        assert await engine.read(fd, offset, len(data)) == data
    # The file on disk agrees with the engine, including the hole between pieces.
    on_disk = path.read_bytes()
    assert len(on_disk) == (1 << 20) + 4
    assert on_disk[4096 : 4096 + 600] == b"middle" * 100
    assert on_disk[4:4096] == bytes(4092)


async def test_write_accepts_bytearray_and_memoryview(fd: int, engine: native.PreadEngine) -> None:
    await engine.write(fd, 0, bytearray(b"abcd"))
    await engine.write(fd, 4, memoryview(b"xxefghxx")[2:6])
    # A memoryview of wider items is written as its raw bytes.
    wide = memoryview(bytearray(range(8))).cast("I")
    await engine.write(fd, 8, wide)
    assert await engine.read(fd, 0, 16) == b"abcdefgh" + bytes(range(8))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 << 20), st.binary(min_size=1, max_size=9000)
        ),
        min_size=1,
        max_size=8,
    )
)
async def test_random_round_trips(tmp_path: Path, writes: list[tuple[int, bytes]]) -> None:
    """Random overlapping writes then reads match a bytearray model and os.pread."""
    engine = native.open_engine("pread", 4)
    handle, name = tempfile.mkstemp(dir=tmp_path)
    os.close(handle)
    fd = native.open_file(name, write=True, create=False)
    try:
        model = bytearray()
        for offset, data in writes:
            await engine.write(fd, offset, data)
            end = offset + len(data)
            if len(model) < end:
                model.extend(bytes(end - len(model)))
            model[offset:end] = data
        for offset, data in writes:
            got = await engine.read(fd, offset, len(data))
            assert got == model[offset : offset + len(data)]
            assert got == os.pread(fd, len(data), offset)
        assert await engine.read(fd, 0, len(model) + 10) == model
    finally:
        native.close_file(fd)
        os.unlink(name)


async def test_many_operations_in_flight(fd: int) -> None:
    """64 tasks writing and reading their own chunk at once all see their own bytes, and the
    engine never has more than queue_depth operations in flight."""
    depth = 8
    engine = native.open_engine("pread", depth)
    chunk = 64 * 1024
    peak = 0
    done = trio.Event()

    async def monitor() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, engine.statistics()["in_flight"])
            await trio.sleep(0)

    async def worker(i: int) -> None:
        data = bytes([i]) * chunk
        await engine.write(fd, i * chunk, data)
        assert await engine.read(fd, i * chunk, chunk) == data

    async with trio.open_nursery() as outer:
        outer.start_soon(monitor)
        async with trio.open_nursery() as nursery:
            for i in range(64):
                nursery.start_soon(worker, i)
        done.set()

    assert 0 < peak <= depth
    stats = engine.statistics()
    assert stats["in_flight"] == 0
    assert stats["reads"] == stats["writes"] == 64
    assert stats["bytes_read"] == stats["bytes_written"] == 64 * chunk
    assert stats["errors"] == 0


async def test_short_read_only_at_eof(fd: int, engine: native.PreadEngine) -> None:
    await engine.write(fd, 0, b"0123456789")
    assert await engine.read(fd, 4, 100) == b"456789"
    assert await engine.read(fd, 10, 5) == b""
    assert await engine.read(fd, 1000, 5) == b""
    assert await engine.read(fd, 0, 0) == b""


async def test_read_on_bad_fd_raises_ebadf(engine: native.PreadEngine) -> None:
    with pytest.raises(OSError) as info:
        await engine.read(-1, 0, 10)
    assert info.value.errno == errno.EBADF
    assert info.value.strerror.startswith("pread: ")
    assert info.value.filename == -1
    assert engine.statistics()["errors"] == 1


async def test_write_on_read_only_fd_raises(path: Path, engine: native.PreadEngine) -> None:
    path.write_bytes(b"x")
    fd = native.open_file(path, write=False, create=False)
    try:
        with pytest.raises(OSError) as info:
            await engine.write(fd, 0, b"y")
        assert info.value.errno == errno.EBADF
        assert info.value.strerror.startswith("pwrite: ")
    finally:
        native.close_file(fd)


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


def test_allocate_and_fsync(fd: int) -> None:
    native.allocate(fd, 0, 1 << 20)
    assert os.fstat(fd).st_size == 1 << 20
    native.allocate(fd, 0, 0)  # nothing to reserve
    native.fsync_file(fd)
    with pytest.raises(ValueError):
        native.allocate(fd, -1, 10)


async def test_engine_statistics_and_close(fd: int) -> None:
    engine = native.open_engine("pread", 3)
    stats = engine.statistics()
    assert stats["name"] == "pread"
    assert stats["queue_depth"] == 3
    assert stats["in_flight"] == stats["waiting"] == 0
    await engine.write(fd, 0, b"abc")
    assert await engine.read(fd, 0, 3) == b"abc"
    await engine.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await engine.read(fd, 0, 3)
    with pytest.raises(trio.ClosedResourceError):
        await engine.write(fd, 0, b"x")


async def test_negative_extents_rejected(fd: int, engine: native.PreadEngine) -> None:
    with pytest.raises(ValueError):
        await engine.read(fd, -1, 10)
    with pytest.raises(ValueError):
        await engine.read(fd, 0, -1)
    with pytest.raises(ValueError):
        await engine.write(fd, -5, b"x")


def test_open_engine_rejects_unknown_kind_and_depth() -> None:
    with pytest.raises(ValueError, match="'uring-typo'"):
        native.open_engine("uring-typo", 8)
    with pytest.raises(ValueError, match="queue_depth"):
        native.open_engine("pread", 0)


def test_native_version_matches() -> None:
    assert native.native_version() == native.EXPECTED_NATIVE_VERSION
    native.check_native_version(native.native_version())


def test_stale_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "EXPECTED_NATIVE_VERSION", native.native_version() + 1)
    with pytest.raises(ImportError, match="make build"):
        native.check_native_version(native.native_version())


def test_missing_native_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading native.py when agent._pollen_io cannot be imported says to run make build."""
    monkeypatch.setitem(sys.modules, "agent._pollen_io", None)
    spec = importlib.util.spec_from_file_location("_native_probe", native.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="make build"):
        spec.loader.exec_module(module)
