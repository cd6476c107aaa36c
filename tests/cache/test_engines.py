"""Tests for agent/cache/engines.py on real files, through the bindings of agent/cache/native.py.

Every engine (io_uring, Linux AIO, pread) runs every test here, with and without O_DIRECT,
against the real kernel: nothing is faked except, in the engine-choice tests, the openers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cache import engines, native

KINDS = ("io_uring", "aio", "pread")
A = native.ALIGNMENT
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[False, True], ids=["buffered", "direct"])
def direct(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chunks"


@pytest.fixture
def fd(path: Path, direct: bool) -> Iterator[int]:
    fd = native.open_file(path, write=True, create=True, direct=direct)
    yield fd
    native.close_file(fd)


@pytest.fixture
async def engine(kind: str, direct: bool) -> AsyncIterator[engines.Engine]:
    async with engines.open_engine(kind, 8, direct=direct) as engine:
        yield engine


def padded(data: bytes, direct: bool) -> bytes:
    """What a write of ``data`` leaves on disk: O_DIRECT rounds the last block up with zeros."""
    return data + bytes(native.round_up(len(data)) - len(data)) if direct else data


# -- known data, round trips ---------------------------------------------------------------


async def test_known_data_at_known_offsets(
    fd: int, path: Path, engine: engines.Engine, direct: bool
) -> None:
    pieces = {0: b"head", 4096: b"middle" * 100, 1 << 20: b"tail"}
    for offset, data in pieces.items():
        await engine.write(fd, offset, data)
    for offset, data in pieces.items():
        assert await engine.read(fd, offset, len(data)) == data
    # The file on disk agrees with the engine, including the hole between pieces.
    on_disk = path.read_bytes()
    assert len(on_disk) == (1 << 20) + (A if direct else 4)
    assert on_disk[:4096] == b"head" + bytes(4092)
    assert on_disk[4096 : 4096 + 600] == b"middle" * 100
    assert on_disk[4096 + 600 : 8192] == bytes(8192 - 4096 - 600)
    stats = engine.statistics()
    assert stats["name"] == engine.name
    assert (stats["reads"], stats["writes"]) == (3, 3)
    assert stats["bytes_written"] == sum(len(d) for d in pieces.values())
    assert stats["copies"] == (3 if direct else 0)
    assert stats["errors"] == stats["in_flight"] == 0


async def test_write_accepts_bytearray_and_memoryview(fd: int, engine: engines.Engine) -> None:
    # Each write starts a block of its own, so O_DIRECT's rounding does not overlap them.
    await engine.write(fd, 0, bytearray(b"abcd"))
    await engine.write(fd, A, memoryview(b"xxefghxx")[2:6])
    # A memoryview of wider items is written as its raw bytes.
    wide = memoryview(bytearray(range(8))).cast("I")
    await engine.write(fd, 2 * A, wide)
    assert await engine.read(fd, 0, 4) == b"abcd"
    assert await engine.read(fd, A, 4) == b"efgh"
    assert await engine.read(fd, 2 * A, 8) == bytes(range(8))
    with pytest.raises(ValueError, match="contiguous"):
        await engine.write(fd, 0, memoryview(b"abcdef")[::2])


async def test_short_read_only_at_eof(fd: int, engine: engines.Engine, direct: bool) -> None:
    await engine.write(fd, 0, b"0123456789")
    size = A if direct else 10  # O_DIRECT wrote the whole block
    assert await engine.read(fd, 4, 6) == b"456789"
    assert len(await engine.read(fd, 4, 100_000)) == size - 4
    assert await engine.read(fd, size, 5) == b""
    assert await engine.read(fd, 1000 * A + 3, 5) == b""
    assert await engine.read(fd, 0, 0) == b""


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    writes=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 << 20),
            st.binary(min_size=1, max_size=20000),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    reads=st.lists(
        st.tuples(st.integers(min_value=0, max_value=(3 << 20) + 30000), st.integers(0, 30000)),
        max_size=6,
    ),
)
async def test_random_round_trips(
    tmp_path: Path,
    kind: str,
    direct: bool,
    writes: list[tuple[int, bytes, bool]],
    reads: list[tuple[int, int]],
) -> None:
    """Random (overlapping) writes, then reads at random offsets and sizes, match a bytearray
    model and os.pread. With O_DIRECT write offsets are rounded down to a block (the engine
    requires it) and the model records the zero padding of each write's last block; half the
    writes come from ``alloc_buffer`` (no copy), half from bytes (copied)."""
    handle, name = tempfile.mkstemp(dir=tmp_path)
    os.close(handle)
    fd = native.open_file(name, write=True, create=False, direct=direct)
    check_fd = os.open(name, os.O_RDONLY)
    try:
        async with engines.open_engine(kind, 4, direct=direct) as engine:
            await check_round_trips(engine, fd, check_fd, direct, writes, reads)
    finally:
        os.close(check_fd)
        native.close_file(fd)
        os.unlink(name)


async def check_round_trips(
    engine: engines.Engine,
    fd: int,
    check_fd: int,
    direct: bool,
    writes: list[tuple[int, bytes, bool]],
    reads: list[tuple[int, int]],
) -> None:
    model = bytearray()
    for offset, data, from_pool in writes:
        if direct:
            offset -= offset % A
        if from_pool:
            source: bytes | memoryview = native.alloc_buffer(len(data))
            source[:] = data
        else:
            source = data
        await engine.write(fd, offset, source)
        stored = padded(data, direct)
        end = offset + len(stored)
        if len(model) < end:
            model.extend(bytes(end - len(model)))
        model[offset:end] = stored
    assert os.fstat(fd).st_size == len(model)
    for offset, data, _ in writes:
        if direct:
            offset -= offset % A
        got = await engine.read(fd, offset, len(data))
        assert got == model[offset : offset + len(data)]
        assert got == os.pread(check_fd, len(data), offset)
    for offset, length in reads:
        got = await engine.read(fd, offset, length)
        assert got == model[offset : offset + length]
        assert got == os.pread(check_fd, length, offset)
    assert await engine.read(fd, 0, len(model) + 10) == model


async def test_direct_layer_tail(tmp_path: Path, kind: str) -> None:
    """A layer whose size is not a multiple of the alignment, written and read chunk by chunk
    with O_DIRECT the way the cache does it: preallocated, chunk buffers from alloc_buffer."""
    size, chunk = 5 * 8192 + 123, 8192
    layer = os.urandom(size)
    path = tmp_path / "layer"
    fd = native.open_file(path, write=True, create=True, direct=True)
    try:
        native.allocate(fd, 0, native.round_up(size))
        async with engines.open_engine(kind, 4, direct=True) as engine:
            for offset in range(0, size, chunk):
                piece = layer[offset : offset + chunk]
                buffer = native.alloc_buffer(len(piece))
                buffer[:] = piece
                await engine.write(fd, offset, buffer)
            for offset in range(0, size, chunk):
                want = layer[offset : offset + chunk]
                got = await engine.read(fd, offset, len(want))
                assert len(got) == len(want) and got == want
            # Reading past the layer's end gives the zero padding, then end of file.
            assert await engine.read(fd, size, 10_000) == bytes(native.round_up(size) - size)
            assert engine.statistics()["copies"] == 0  # alloc_buffer views go to disk as is
    finally:
        native.close_file(fd)
    assert path.stat().st_size == native.round_up(size)
    assert path.read_bytes()[:size] == layer


async def test_direct_write_needs_an_aligned_offset(
    fd: int, kind: str, engine: engines.Engine, direct: bool
) -> None:
    if not direct:
        await engine.write(fd, 3, b"x")  # buffered: any offset
        return
    with pytest.raises(ValueError, match="multiple of 4096"):
        await engine.write(fd, 3, b"x")


# -- concurrency -----------------------------------------------------------------------


async def test_many_operations_in_flight(fd: int, kind: str, direct: bool) -> None:
    """64 tasks writing and reading their own chunk at once all see their own bytes, and the
    engine has several operations in flight but never more than queue_depth."""
    depth = 8
    chunk = 64 * 1024
    peak = 0
    done = trio.Event()
    async with engines.open_engine(kind, depth, direct=direct) as engine:

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

        assert 1 < peak <= depth
        stats = engine.statistics()
        assert stats["in_flight"] == stats["waiting"] == 0
        assert stats["reads"] == stats["writes"] == 64
        assert stats["bytes_read"] == stats["bytes_written"] == 64 * chunk
        assert stats["errors"] == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_event_loop_keeps_answering_during_a_large_batch(tmp_path: Path, kind: str) -> None:
    """256 MiB written then read back (O_DIRECT, 4 MiB chunks, 32 in flight), while a task
    ticking every 5 ms records the longest gap between its ticks. If the I/O ran on the event
    loop's thread the gap would be about the batch's duration; it must stay well under it.
    (A hang detector, not a performance threshold.)"""
    total, chunk, depth = 256 * MiB, 4 * MiB, 32
    path = tmp_path / "batch"
    fd = native.open_file(path, write=True, create=True, direct=True)
    native.allocate(fd, 0, total)  # as the cache does: writes inside the file never extend it
    gaps: list[float] = []
    ticking = True

    async def ticker() -> None:
        last = time.perf_counter()
        while ticking:
            await trio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        async with engines.open_engine(kind, depth, direct=True) as engine:
            source = native.alloc_buffer(chunk)
            source[:] = os.urandom(chunk)

            async def writer(first: int) -> None:
                for offset in range(first * chunk, total, depth * chunk):
                    await engine.write(fd, offset, source)

            async def reader(first: int) -> None:
                for offset in range(first * chunk, total, depth * chunk):
                    assert await engine.read(fd, offset, chunk) == source

            async with trio.open_nursery() as outer:
                outer.start_soon(ticker)
                await trio.sleep(0.02)
                started = time.perf_counter()
                for job in (writer, reader):
                    async with trio.open_nursery() as nursery:
                        for i in range(depth):
                            nursery.start_soon(job, i)
                duration = time.perf_counter() - started
                ticking = False
            assert engine.statistics()["bytes_read"] == total
    finally:
        native.close_file(fd)
    max_gap = max(gaps)
    assert len(gaps) >= 3
    assert max_gap < duration / 2, f"event loop stalled {max_gap:.3f}s of a {duration:.3f}s batch"


async def test_cancelled_waiter_keeps_its_buffer_until_reaped() -> None:
    """A read cancelled while the kernel holds it: the waiter leaves at once, the operation
    stays in flight (its buffer referenced) until the kernel completes it, and then the reaper
    collects it. io_uring reads from an empty pipe stay in the kernel until data arrives,
    which makes the timing deterministic."""
    read_end, write_end = os.pipe()
    try:
        async with engines.open_engine("io_uring", 2) as engine:
            with trio.move_on_after(0.05):
                await engine.read(read_end, 0, 100)
            stats = engine.statistics()
            assert stats["abandoned"] == 1
            assert stats["in_flight"] == 1
            assert stats["reads"] == 0
            os.write(write_end, b"late data")  # the kernel now writes into the kept buffer
            with trio.fail_after(5):
                while engine.statistics()["in_flight"]:
                    await trio.sleep(0.001)
            # The slot came back: a full queue depth of new operations still fits.
            os.write(write_end, b"ab")
            assert await engine.read(read_end, 0, 2) == b"ab"
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("kind", ["io_uring", "aio"])
async def test_cancelled_disk_read_is_reaped(tmp_path: Path, kind: str) -> None:
    """The same with a large O_DIRECT read from disk, for both kernel engines."""
    size = 128 * MiB
    path = tmp_path / "big"
    fd = native.open_file(path, write=True, create=True, direct=True)
    try:
        async with engines.open_engine(kind, 4, direct=True) as engine:
            block = native.alloc_buffer(16 * MiB)
            block[:] = b"\x11" * len(block)
            for offset in range(0, size, len(block)):
                await engine.write(fd, offset, block)
            finished = False

            async def read() -> None:
                nonlocal finished
                await engine.read(fd, 0, size)
                finished = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                while engine.statistics()["in_flight"] == 0 and not finished:
                    await trio.sleep(0)
                nursery.cancel_scope.cancel()
            assert not finished, "the read finished before it could be cancelled"
            assert engine.statistics()["abandoned"] == 1
            with trio.fail_after(10):
                while engine.statistics()["in_flight"]:
                    await trio.sleep(0.001)
            assert await engine.read(fd, size - 3, 3) == b"\x11\x11\x11"
    finally:
        native.close_file(fd)


@pytest.mark.parametrize("kind", ["io_uring", "aio"])
async def test_aclose_waits_for_operations_in_flight(fd: int, kind: str, direct: bool) -> None:
    """io_uring and AIO: aclose returns once the kernel is done with every buffer.
    (PreadEngine.aclose returns at once; its thread calls finish and free on their own.)"""
    native.allocate(fd, 0, 32 * MiB)
    results: list[int] = []
    async with engines.open_engine(kind, 4, direct=direct) as engine:

        async def read() -> None:
            results.append(len(await engine.read(fd, 0, 32 * MiB)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            while engine.statistics()["in_flight"] == 0 and not results:
                await trio.sleep(0)
            await engine.aclose()
            assert engine.statistics()["in_flight"] == 0
    assert results == [32 * MiB]
    with pytest.raises(trio.ClosedResourceError):
        await engine.read(fd, 0, 3)
    with pytest.raises(trio.ClosedResourceError):
        await engine.write(fd, 0, b"x")


@pytest.mark.parametrize("kind", ["io_uring", "aio"])
async def test_cancelled_aclose_still_waits_for_the_kernel(tmp_path: Path, kind: str) -> None:
    """aclose cancelled while reads are in flight: the C close waits for the kernel before
    anything is freed, and the waiters are told (ECANCELED) instead of hanging."""
    size = 64 * MiB
    path = tmp_path / "big"
    fd = native.open_file(path, write=True, create=True, direct=True)
    native.allocate(fd, 0, size)
    outcomes: list[object] = []
    try:
        async with engines.open_engine(kind, 4, direct=True) as engine:

            async def read(offset: int) -> None:
                try:
                    outcomes.append(len(await engine.read(fd, offset, size // 4)))
                except OSError as exc:
                    outcomes.append(exc.errno)

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(read, i * size // 4)
                while engine.statistics()["in_flight"] < 4 and not outcomes:
                    await trio.sleep(0)
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await engine.aclose()
            assert engine.statistics()["in_flight"] == 0
    finally:
        native.close_file(fd)
    assert len(outcomes) == 4
    assert all(o in (size // 4, errno.ECANCELED) for o in outcomes), outcomes


async def test_body_exceptions_pass_through_unwrapped(kind: str) -> None:
    """The reaper's nursery does not wrap the caller's exception in an ExceptionGroup."""
    with pytest.raises(KeyError):
        async with engines.open_engine(kind, 2):
            raise KeyError("from the body")
    with pytest.raises(KeyError):
        async with engines.select_engine((kind,), 2) as (_engine, _notes):
            raise KeyError("from the body")


async def test_kernel_engine_needs_async_with(fd: int) -> None:
    engine = engines.open_engine("io_uring", 2)
    with pytest.raises(RuntimeError, match="async with"):
        await engine.read(fd, 0, 1)
    await engine.aclose()


# -- errors ------------------------------------------------------------------------------


def op_prefix(kind: str, op: str) -> str:
    if kind == "pread":
        return "pread: " if op == "read" else "pwrite: "
    return f"{kind} {op}: "


async def test_bad_fd_raises_ebadf(kind: str, engine: engines.Engine) -> None:
    for op in ("read", "write"):
        with pytest.raises(OSError) as info:
            if op == "read":
                await engine.read(-1, 0, 10)
            else:
                await engine.write(-1, 0, b"x" * 10)
        assert info.value.errno == errno.EBADF
        assert info.value.strerror.startswith(op_prefix(kind, op))
        assert info.value.filename == -1
    assert engine.statistics()["errors"] == 2
    assert engine.statistics()["in_flight"] == 0


async def test_write_on_read_only_fd_raises(
    path: Path, kind: str, engine: engines.Engine, direct: bool
) -> None:
    path.write_bytes(b"x")
    fd = native.open_file(path, write=False, create=False, direct=direct)
    try:
        with pytest.raises(OSError) as info:
            await engine.write(fd, 0, b"y")
        assert info.value.errno == errno.EBADF
        assert info.value.strerror.startswith(op_prefix(kind, "write"))
        assert info.value.filename == fd
    finally:
        native.close_file(fd)


async def test_misaligned_direct_io_reports_einval(path: Path, kind: str) -> None:
    """An O_DIRECT fd used by an engine that does not align (direct=False): the kernel refuses
    the unaligned buffer with EINVAL, and the engine reports it as an OSError."""
    fd = native.open_file(path, write=True, create=True, direct=True)
    try:
        async with engines.open_engine(kind, 2, direct=False) as engine:
            with pytest.raises(OSError) as info:
                await engine.write(fd, 0, b"z" * 100)
            assert info.value.errno == errno.EINVAL
            assert info.value.strerror.startswith(op_prefix(kind, "write"))
    finally:
        native.close_file(fd)


@pytest.fixture(scope="module")
def tiny_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 16 MiB ext4 filesystem on a loop device, mounted for this module's tests."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    if not (shutil.which("mkfs.ext4") and shutil.which("mount") and shutil.which("losetup")):
        pytest.skip("mkfs.ext4, mount or losetup is not installed")
    base = tmp_path_factory.mktemp("tinyfs")
    image, mount_point = base / "fs.img", base / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        # "mount -o loop" sets autoclear, so umount detaches the device; detach any leftover.
        found = subprocess.run(
            ["losetup", "-j", str(image)], capture_output=True, text=True, check=False
        )
        for line in found.stdout.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


async def test_disk_full_raises_enospc(
    tiny_fs: Path, kind: str, engine: engines.Engine, direct: bool
) -> None:
    path = tiny_fs / f"fill-{kind}-{direct}"
    fd = native.open_file(path, write=True, create=True, direct=direct)
    chunk = native.alloc_buffer(MiB)
    chunk[:] = b"\xab" * MiB
    try:
        with pytest.raises(OSError) as info:
            for i in range(64):  # 64 MiB into a 16 MiB filesystem
                await engine.write(fd, i * MiB, chunk)
        assert info.value.errno == errno.ENOSPC
        assert info.value.strerror.startswith(op_prefix(kind, "write"))
        assert engine.statistics()["errors"] == 1
        assert engine.statistics()["in_flight"] == 0
    finally:
        native.close_file(fd)
        path.unlink()


# -- choosing an engine --------------------------------------------------------------------


def fake_opener(refuse: dict[str, int]) -> Callable[[str], str]:
    def opener(kind: str) -> str:
        if kind in refuse:
            raise OSError(refuse[kind], f"open {kind}: {os.strerror(refuse[kind])}")
        return f"<{kind}>"

    return opener


def test_choose_engine_takes_the_first_that_opens() -> None:
    order = ("io_uring", "aio", "pread")
    assert engines.choose_engine(order, fake_opener({})) == ("io_uring", "<io_uring>", [])
    kind, opened, notes = engines.choose_engine(order, fake_opener({"io_uring": errno.EPERM}))
    assert (kind, opened) == ("aio", "<aio>")
    assert notes == [
        "io_uring unavailable: [Errno 1] open io_uring: Operation not permitted; using aio"
    ]
    kind, _, notes = engines.choose_engine(
        order, fake_opener({"io_uring": errno.ENOSYS, "aio": errno.EAGAIN})
    )
    assert kind == "pread"
    assert [n.split(":")[0] for n in notes] == ["io_uring unavailable", "aio unavailable"]
    assert all(n.endswith("; using pread") for n in notes)


def test_choose_engine_never_falls_back_silently() -> None:
    # A forced engine that cannot open is an error, with the reason.
    with pytest.raises(OSError) as info:
        engines.choose_engine(("io_uring",), fake_opener({"io_uring": errno.EPERM}))
    assert info.value.errno == errno.EPERM
    assert "io_uring unavailable" in info.value.strerror
    with pytest.raises(OSError) as info:
        engines.choose_engine(
            ("io_uring", "aio"), fake_opener({"io_uring": errno.EPERM, "aio": errno.EAGAIN})
        )
    assert info.value.errno == errno.EAGAIN
    assert "io_uring unavailable" in info.value.strerror
    assert "aio unavailable" in info.value.strerror
    with pytest.raises(ValueError, match="'uring-typo'"):
        engines.choose_engine(("uring-typo", "pread"), fake_opener({}))
    with pytest.raises(ValueError):
        engines.choose_engine((), fake_opener({}))


async def test_select_engine_on_this_machine(
    fd: int, direct: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.cache.engines")
    order = ("io_uring", "aio", "pread")
    async with engines.select_engine(order, 4, direct=direct) as (engine, notes):
        assert engine.name == "io_uring" and notes == []
        await engine.write(fd, 0, b"selected")
        assert await engine.read(fd, 0, 8) == b"selected"
        assert engine.statistics()["direct"] is direct
    assert engine.statistics()["in_flight"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.cache.engines"]
    assert len(lines) == 1 and lines[0].startswith("cache I/O engine: io_uring")
    for forced in KINDS:
        async with engines.select_engine((forced,), 2, direct=direct) as (engine, notes):
            assert engine.name == forced


async def test_open_preferred_engine_is_entered_later(fd: int, direct: bool) -> None:
    """The synchronous form, for a caller that builds its components before running them."""
    engine = engines.open_preferred_engine(("io_uring", "aio"), 2, direct=direct)
    assert engine.name == "io_uring"
    with pytest.raises(RuntimeError, match="async with"):
        await engine.write(fd, 0, b"too early")
    async with engine:
        await engine.write(fd, 0, b"in time")
        assert await engine.read(fd, 0, 7) == b"in time"
    with pytest.raises(OSError) as info:
        engines.open_preferred_engine(("io_uring",), 100_000)
    assert info.value.errno == errno.EINVAL
    assert "io_uring unavailable" in info.value.strerror


# A child process whose seccomp filter makes io_uring_setup fail with EPERM, as a container
# runtime's default profile does: select_engine must fall back to AIO and say why.
SECCOMP_CHILD = textwrap.dedent(
    """
    import ctypes, json, platform, sys
    import trio
    from agent.cache import engines
    AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
    NR_IO_URING_SETUP = 425  # the same number on every architecture

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
    ALLOW, ERRNO_EPERM = 0x7FFF0000, 0x00050000 | 1
    program = [
        (LD_ABS_W, 0, 0, 4), (JEQ_K, 1, 0, AUDIT_ARCH), (RET_K, 0, 0, ALLOW),
        (LD_ABS_W, 0, 0, 0), (JEQ_K, 0, 1, NR_IO_URING_SETUP), (RET_K, 0, 0, ERRNO_EPERM),
        (RET_K, 0, 0, ALLOW),
    ]
    filters = (SockFilter * len(program))(*[SockFilter(*f) for f in program])
    prog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP

    async def main():
        order = ("io_uring", "aio", "pread")
        async with engines.select_engine(order, 4, direct=True) as (engine, notes):
            stats = engine.statistics()
        print(json.dumps({"name": engine.name, "notes": notes, "status": stats["notes"]}))

    trio.run(main)
    """
)


def test_seccomp_forbidding_io_uring_falls_back_to_aio() -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the seccomp filter in this test is written for x86_64 and aarch64 only")
    child = subprocess.run(
        [sys.executable, "-c", SECCOMP_CHILD], cwd=ROOT, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["name"] == "aio"
    assert result["notes"] == result["status"]
    assert len(result["notes"]) == 1
    assert result["notes"][0].startswith("io_uring unavailable: [Errno 1] open io_uring: ")
    assert result["notes"][0].endswith("; using aio")
    assert "cache I/O engine: io_uring unavailable" in child.stderr  # logged at start-up


def test_aio_without_direct_says_so() -> None:
    engine = engines.open_engine("aio", 2, direct=False)
    assert any("without O_DIRECT" in note for note in engine.statistics()["notes"])
    assert engines.open_engine("aio", 2, direct=True).statistics()["notes"] == []


def test_open_engine_rejects_unknown_kind_and_depth() -> None:
    with pytest.raises(ValueError, match="'uring-typo'"):
        engines.open_engine("uring-typo", 8)
    for kind in KINDS:
        with pytest.raises(ValueError, match="queue_depth"):
            engines.open_engine(kind, 0)
    with pytest.raises(OSError) as info:  # beyond what the C side accepts
        engines.open_engine("io_uring", 100_000)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror.startswith("open io_uring: ")


async def test_negative_extents_rejected(fd: int, engine: engines.Engine) -> None:
    with pytest.raises(ValueError):
        await engine.read(fd, -1, 10)
    with pytest.raises(ValueError):
        await engine.read(fd, 0, -1)
    with pytest.raises(ValueError):
        await engine.write(fd, -5, b"x")


async def test_pread_engine_works_without_async_with(fd: int, direct: bool) -> None:
    """PreadEngine owns no task, so the cache's tests can build it directly."""
    engine = engines.PreadEngine(3, direct=direct)
    stats = engine.statistics()
    assert stats["name"] == "pread"
    assert stats["queue_depth"] == 3
    assert stats["in_flight"] == stats["waiting"] == 0
    await engine.write(fd, 0, b"abc")
    assert await engine.read(fd, 0, 3) == b"abc"
    await engine.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await engine.read(fd, 0, 3)
