"""Bindings to the native chunk I/O module, and the chunk I/O engines built on it.

This is the only importer of ``agent._pollen_io`` (compiled from ``native/pollen_io.c`` by
``build.py``). Keeping the import in one place means one place checks that the compiled module
matches this Python code, and one place turns the C library's status codes into ``OSError``.

The C functions follow one convention: they return 0 or a positive errno and write results
into caller-owned buffers. ``_check`` turns a non-zero status into ``OSError(errno, "<op>:
<strerror>", <path or fd>)``, so a failure always names the operation and what it touched.

The engines run each blocking call in a worker thread (cffi's API mode releases the GIL for the
duration of the C call), bounded by a ``trio.CapacityLimiter`` of ``queue_depth`` threads, so
the event loop never waits for the disk and the disk never sees more than ``queue_depth``
operations from us. ``PreadEngine`` is the plain ``pread``/``pwrite`` engine; io_uring and
Linux AIO engines (with ``O_DIRECT``) are a later addition behind ``open_engine``.

The small file helpers (``open_file``, ``fsync_file``, ...) are synchronous: callers that must
not block the event loop on them (``fsync`` can take a while) run them with
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import trio

try:
    from agent._pollen_io import ffi, lib
except ImportError as exc:  # not built, or built for another Python
    raise ImportError(
        f"the native module agent._pollen_io cannot be loaded ({exc}); "
        "build it with `make build` (or `python build.py` inside the project's venv)"
    ) from exc

#: The ``POLLEN_IO_VERSION`` this Python code was written against. Bump it together with the
#: macro in ``native/pollen_io.h`` whenever the C interface changes.
EXPECTED_NATIVE_VERSION: int = 1

#: Permission bits for files we create: the cache holds layers of private images, which other
#: local users must not read.
FILE_MODE: int = 0o600

# Chunk buffers are overwritten by the read straight away, so zero-filling them first (what a
# plain ``ffi.new`` does) would only cost time on multi-MiB chunks.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def check_native_version(found: int) -> None:
    """Refuse a compiled module whose version differs from ``EXPECTED_NATIVE_VERSION``.

    A mismatch means the ``.so`` was built from older (or newer) C sources than this Python
    code, typically after a ``git pull`` without a rebuild; calling into it could pass the
    wrong arguments, so we fail at import with the fix in the message.
    """
    if found != EXPECTED_NATIVE_VERSION:
        raise ImportError(
            f"stale build: the native module agent._pollen_io is version {found}, but "
            f"agent/native.py expects version {EXPECTED_NATIVE_VERSION}; run `make build`"
        )


def native_version() -> int:
    """The ``POLLEN_IO_VERSION`` the loaded native module was compiled with."""
    return int(lib.pollen_version())


check_native_version(native_version())


def _check(status: int, op: str, path_or_fd: str | int | None) -> None:
    """Raise ``OSError`` for a non-zero C status; ``op`` names the call in the message.

    ``OSError`` picks its subclass from the errno (``FileNotFoundError`` for ``ENOENT``...),
    so callers can catch either the subclass or check ``.errno``.
    """
    if status != 0:
        raise OSError(status, f"{op}: {os.strerror(status)}", path_or_fd)


def open_file(
    path: str | os.PathLike[str], *, write: bool, create: bool, direct: bool = False
) -> int:
    """Open ``path`` and return the fd; ``O_CLOEXEC`` is always set.

    ``write`` opens read-write (the cache reads back what it writes through the same fd);
    ``create`` adds ``O_CREAT`` with mode ``FILE_MODE`` and never truncates an existing file;
    ``direct`` adds ``O_DIRECT``, whose buffers, offsets and lengths must be block-aligned, so
    such fds are for the aligned engines, not ``PreadEngine``.
    """
    if create and not write:
        raise ValueError("open_file: create=True needs write=True")
    name = os.fsdecode(path)
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError(f"open_file: embedded null byte in path {name!r}")
    flags = os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
    if create:
        flags |= os.O_CREAT
    if direct:
        o_direct = int(lib.pollen_o_direct())
        if o_direct == 0:
            raise OSError(errno.EINVAL, "open: O_DIRECT is not supported on this platform", name)
        flags |= o_direct
    fd_out = ffi.new("int *")
    _check(lib.pollen_open(raw, flags, FILE_MODE, fd_out), "open", name)
    return int(fd_out[0])


def close_file(fd: int) -> None:
    """Close ``fd``. The fd is released even if this raises."""
    _check(lib.pollen_close(fd), "close", fd)


def fsync_file(fd: int) -> None:
    """Flush ``fd``'s data and metadata to stable storage (blocks; see the module docstring)."""
    _check(lib.pollen_fsync(fd), "fsync", fd)


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk blocks for ``[offset, offset + length)``, so a full disk shows up here, at
    admission, rather than halfway through writing a layer. A zero length reserves nothing."""
    if offset < 0 or length < 0:
        raise ValueError(f"allocate: negative offset {offset} or length {length}")
    if length == 0:
        return
    _check(lib.pollen_fallocate(fd, offset, length), "fallocate", fd)


def _pread_blocking(fd: int, offset: int, length: int) -> bytes:
    """Read on a worker thread; the one copy is from the C buffer into the returned bytes."""
    buf = _new_uncleared("char[]", length)
    done = ffi.new("size_t *")
    _check(lib.pollen_pread_full(fd, buf, length, offset, done), "pread", fd)
    return ffi.buffer(buf, done[0])[:]


def _pwrite_blocking(fd: int, offset: int, data: bytes | bytearray | memoryview) -> int:
    """Write on a worker thread straight from the caller's buffer (no copy); returns bytes."""
    cbuf: Any = ffi.from_buffer(data)
    done = ffi.new("size_t *")
    _check(lib.pollen_pwrite_full(fd, cbuf, len(cbuf), offset, done), "pwrite", fd)
    return int(done[0])


def _check_extent(op: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"{op}: negative offset {offset} or length {length}")


class PreadEngine:
    """Plain pread/pwrite engine; runs calls in worker threads bounded by a
    ``trio.CapacityLimiter(queue_depth)`` so the event loop never blocks on the disk.

    The limiter is handed to ``trio.to_thread.run_sync`` itself, so it bounds the threads (and
    the disk operations in flight) rather than just the callers. A call that has started in a
    thread runs to completion even if its task is cancelled, which keeps the buffer alive for
    as long as the C code uses it; cancellation takes effect when the call returns.
    """

    name = "pread"

    def __init__(self, queue_depth: int) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be at least 1, not {queue_depth}")
        self.queue_depth = queue_depth
        self._limiter = trio.CapacityLimiter(queue_depth)
        self._closed = False
        self._reads = 0
        self._writes = 0
        self._bytes_read = 0
        self._bytes_written = 0
        self._errors = 0

    def _ensure_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} engine is closed")

    async def read(self, fd: int, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; the result is shorter only at end of file."""
        self._ensure_open()
        _check_extent("read", offset, length)
        if length == 0:
            await trio.lowlevel.checkpoint()
            return b""
        try:
            data = await trio.to_thread.run_sync(
                _pread_blocking, fd, offset, length, limiter=self._limiter
            )
        except OSError:
            self._errors += 1
            raise
        self._reads += 1
        self._bytes_read += len(data)
        return data

    async def write(self, fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset``; the caller must not modify ``data`` meanwhile."""
        self._ensure_open()
        _check_extent("write", offset, 0)
        if len(data) == 0:
            await trio.lowlevel.checkpoint()
            return
        try:
            written = await trio.to_thread.run_sync(
                _pwrite_blocking, fd, offset, data, limiter=self._limiter
            )
        except OSError:
            self._errors += 1
            raise
        self._writes += 1
        self._bytes_written += written

    def statistics(self) -> dict[str, Any]:
        """Operations in flight and waiting, and totals since the engine was opened."""
        return {
            "name": self.name,
            "queue_depth": self.queue_depth,
            "in_flight": self._limiter.borrowed_tokens,
            "waiting": self._limiter.statistics().tasks_waiting,
            "reads": self._reads,
            "writes": self._writes,
            "bytes_read": self._bytes_read,
            "bytes_written": self._bytes_written,
            "errors": self._errors,
        }

    async def aclose(self) -> None:
        """Refuse new operations; calls already in a thread finish on their own.

        The engine owns no fds (callers do), so there is nothing else to release.
        """
        self._closed = True
        await trio.lowlevel.checkpoint()


_ENGINES: dict[str, type[PreadEngine]] = {"pread": PreadEngine}


def open_engine(kind: str, queue_depth: int) -> PreadEngine:
    """Return the chunk I/O engine named ``kind`` with ``queue_depth`` operations in flight."""
    try:
        engine_class = _ENGINES[kind]
    except KeyError:
        known = ", ".join(sorted(_ENGINES))
        raise ValueError(f"unknown I/O engine {kind!r} (known: {known})") from None
    return engine_class(queue_depth)
