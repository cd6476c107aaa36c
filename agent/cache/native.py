"""Bindings to the native chunk I/O module: files, aligned memory, and the C library itself.

This is the only importer of ``agent.cache._pollen_io`` (compiled from ``native/pollen_io.c`` by
``build.py``). Keeping the import in one place means one place checks that the compiled module
matches this Python code, and one place turns the C library's status codes into ``OSError``.
The chunk I/O engines (``agent.cache.engines``) reach the C library only through this module:
its ``lib`` and ``ffi``, ``check_status``, ``buffer_pool`` and ``export_buffer``.

The C functions follow one convention: they return 0 or a positive errno and write results
into caller-owned buffers. ``check_status`` turns a non-zero status into ``OSError(errno,
"<op>: <strerror>", <path or fd>)``, so a failure always names the operation and what it
touched.

Theory of operation
-------------------
* **Files.** ``open_file`` opens with ``O_CLOEXEC`` and, for the cache's O_DIRECT mode,
  ``O_DIRECT``; ``allocate`` reserves a layer's blocks at admission so a full disk shows up
  there. With O_DIRECT the engines write a final partial block rounded up, so the file may grow
  past the layer's size by less than ``ALIGNMENT``: preallocate ``round_up(size)``.
* **Buffers.** ``alloc_buffer`` and every engine ``read`` hand out views of page-aligned
  mappings from ``buffer_pool``, which recycles a mapping when the last view of it goes away:
  memory the kernel has already faulted in costs far less to submit than fresh pages. An
  ``alloc_buffer`` view is zero-padded up to ``round_up(n)``, so an O_DIRECT write of it needs
  no copy.
* **Handing memory to C.** ``export_buffer`` gives the pointer to a Python buffer together with
  an owner that keeps its memory alive and bounds how far it extends; the engines keep the
  owner referenced for as long as the kernel may touch the memory.

The small file helpers (``open_file``, ``fsync_file``, ...) are synchronous: callers that must
not block the event loop on them (``fsync`` can take a while) run them with
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

try:
    from agent.cache._pollen_io import ffi, lib
except ImportError as exc:  # not built, or built for another Python
    raise ImportError(
        f"the native module agent.cache._pollen_io cannot be loaded ({exc}); "
        "build it with `make build` (or `python build.py` inside the project's venv)"
    ) from exc

#: The ``POLLEN_IO_VERSION`` this Python code was written against. Bump it together with the
#: macro in ``native/pollen_io.h`` whenever the C interface changes.
EXPECTED_NATIVE_VERSION: int = 2

#: Permission bits for files we create: the cache holds layers of private images, which other
#: local users must not read.
FILE_MODE: int = 0o600

#: Alignment of O_DIRECT buffers, offsets and lengths. 4096 suits every Linux block device
#: (512-byte and 4Kn sectors) and is the page size, so ``mmap`` memory is always aligned.
ALIGNMENT: int = 4096

#: What ``export_buffer`` (and so an engine's ``write``) accepts.
Buffer = bytes | bytearray | memoryview


def check_native_version(found: int) -> None:
    """Refuse a compiled module whose version differs from ``EXPECTED_NATIVE_VERSION``.

    A mismatch means the ``.so`` was built from older (or newer) C sources than this Python
    code, typically after a ``git pull`` without a rebuild; calling into it could pass the
    wrong arguments, so we fail at import with the fix in the message.
    """
    if found != EXPECTED_NATIVE_VERSION:
        raise ImportError(
            f"stale build: the native module agent.cache._pollen_io is version {found}, but "
            f"agent/cache/native.py expects version {EXPECTED_NATIVE_VERSION}; run `make build`"
        )


def native_version() -> int:
    """The ``POLLEN_IO_VERSION`` the loaded native module was compiled with."""
    return int(lib.pollen_version())


check_native_version(native_version())


def check_status(status: int, op: str, path_or_fd: str | int | None) -> None:
    """Raise ``OSError`` for a non-zero C status; ``op`` names the call in the message.

    ``OSError`` picks its subclass from the errno (``FileNotFoundError`` for ``ENOENT``...),
    so callers can catch either the subclass or check ``.errno``.
    """
    if status != 0:
        raise OSError(status, f"{op}: {os.strerror(status)}", path_or_fd)


# -- files -------------------------------------------------------------------------------


def open_file(
    path: str | os.PathLike[str], *, write: bool, create: bool, direct: bool = False
) -> int:
    """Open ``path`` and return the fd; ``O_CLOEXEC`` is always set.

    ``write`` opens read-write (the cache reads back what it writes through the same fd);
    ``create`` adds ``O_CREAT`` with mode ``FILE_MODE`` and never truncates an existing file;
    ``direct`` adds ``O_DIRECT``: use such fds only with an engine opened with ``direct=True``.
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
    check_status(lib.pollen_open(raw, flags, FILE_MODE, fd_out), "open", name)
    return int(fd_out[0])


def close_file(fd: int) -> None:
    """Close ``fd``. The fd is released even if this raises."""
    check_status(lib.pollen_close(fd), "close", fd)


def fsync_file(fd: int) -> None:
    """Flush ``fd``'s data and metadata to stable storage (blocks; see the module docstring)."""
    check_status(lib.pollen_fsync(fd), "fsync", fd)


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk blocks for ``[offset, offset + length)``, so a full disk shows up here, at
    admission, rather than halfway through writing a layer. A zero length reserves nothing.

    With O_DIRECT, reserve ``round_up(size)``: writes into reserved blocks inside the file's
    size do not extend it, which filesystems (ext4) otherwise perform synchronously.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"allocate: negative offset {offset} or length {length}")
    if length == 0:
        return
    check_status(lib.pollen_fallocate(fd, offset, length), "fallocate", fd)


# -- aligned memory and handing it to C --------------------------------------------------


def round_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


def size_class(n: int) -> int:
    """The size of the pooled mapping that serves a buffer of ``n`` bytes: the next power of
    two, one page at least."""
    return max(ALIGNMENT, 1 << (max(n, 1) - 1).bit_length())


class BufferPool:
    """Page-aligned buffers, recycled instead of unmapped.

    A fresh anonymous mapping costs a page fault and a zero-fill per page the first time it is
    touched, and for an O_DIRECT read that happens inside the submitting system call, on the
    event loop's thread: about 2 ms per 4 MiB here, against 0.3 ms for memory already touched.
    So every buffer this module hands out is a view of a pooled mapping, and the mapping goes
    back to the pool when the last Python reference to its memory goes away (the view holds a
    cffi pointer whose destructor returns it). At most ``max_idle_bytes`` wait in the pool;
    beyond that, returned mappings are unmapped.

    Mappings come in size classes (powers of two, one page at least), not in the exact sizes
    asked for, and a buffer takes an idle mapping of its class or, failing that, of the next
    one: a layer's last chunk, a read rounded out to blocks, or a head chunk (half a chunk)
    then reuses a chunk's mapping instead of faulting in a new one and parking it in the idle
    budget, where an odd size would wait for a twin that rarely comes. Only the pages a
    buffer's user touches are ever faulted in, so the rest of a mapping costs nothing.

    The destructor may run on any thread, or inside the garbage collector, so the pool takes no
    lock: ``list.append`` and ``list.pop`` are atomic, and the idle count is approximate.
    """

    def __init__(self, max_idle_bytes: int = 128 << 20) -> None:
        self.max_idle_bytes = max_idle_bytes
        self._idle: dict[int, list[tuple[mmap.mmap, Any]]] = {}
        self._idle_bytes = 0
        self.created = 0
        self.reused = 0
        self.created_bytes = 0  # memory first touched by whoever fills it: page faults
        self.in_use_bytes = 0
        self.peak_in_use_bytes = 0  # the working set: what the idle budget should cover

    def take(self, n: int) -> memoryview:
        """A view of ``n`` bytes at a page-aligned address, backed by ``round_up(n)`` bytes
        (at least one page) that the view's ``obj`` covers. Contents are undefined."""
        size = size_class(n)
        idle = self._idle.get(size) or self._idle.get(2 * size)  # a head chunk takes a chunk's
        if idle:
            mapping, base = idle.pop()
            size = len(mapping)
            self._idle_bytes -= size
            self.reused += 1
        else:
            mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANON)
            base = ffi.from_buffer(mapping, require_writable=True)
            self.created += 1
            self.created_bytes += size
        self.in_use_bytes += size
        self.peak_in_use_bytes = max(self.peak_in_use_bytes, self.in_use_bytes)
        pointer = ffi.gc(ffi.cast("char *", base), lambda _: self._give_back(size, mapping, base))
        return memoryview(ffi.buffer(pointer, max(ALIGNMENT, round_up(n))))[:n]

    def _give_back(self, size: int, mapping: mmap.mmap, base: Any) -> None:
        self.in_use_bytes -= size
        if self._idle_bytes + size <= self.max_idle_bytes:
            self._idle.setdefault(size, []).append((mapping, base))
            self._idle_bytes += size

    def statistics(self) -> dict[str, int]:
        return {
            "idle_bytes": self._idle_bytes,
            "max_idle_bytes": self.max_idle_bytes,
            "created": self.created,
            "created_bytes": self.created_bytes,
            "reused": self.reused,
            "in_use_bytes": self.in_use_bytes,
            "peak_in_use_bytes": self.peak_in_use_bytes,
        }


#: The pool behind ``alloc_buffer`` and every buffer the engines read into.
buffer_pool = BufferPool()


def alloc_buffer(n: int) -> memoryview:
    """``n`` writable bytes at a page-aligned address, for data to ``write`` with O_DIRECT.

    The view's memory continues, zero-filled, up to ``round_up(n)`` bytes, so an O_DIRECT write
    of the view uses the rounded length without a copy. The first ``n`` bytes are undefined
    (recycled memory): fill them. The memory is recycled when the last view of it goes away.
    """
    if n < 0:
        raise ValueError(f"alloc_buffer: negative size {n}")
    view = buffer_pool.take(n)
    padding = memoryview(view.obj)[n:]
    padding[:] = bytes(len(padding))
    return view


def address_of(cdata: Any) -> int:
    """The address a cffi pointer or buffer points at, as an int: the engines check alignment
    and the room left after a pointer with it."""
    return int(ffi.cast("uintptr_t", cdata))


def export_buffer(data: Buffer) -> tuple[Any, int, Any]:
    """``(pointer, length, owner)`` for the bytes of ``data``.

    ``owner`` is a cffi buffer of the whole object the bytes live in, so ``len(owner)`` bounds
    how far past the pointer the memory goes, and holding ``owner`` keeps the memory alive (the
    pointer alone does not). For a memoryview the export is taken from the object underneath
    (its ``obj``: bytes, bytearray, mmap...), not from the view: the garbage collector cannot
    clear an exported memoryview, and a cffi buffer of one caught in a reference cycle (an
    exception's traceback, say) crashes the interpreter when the cycle is collected.
    """
    if isinstance(data, memoryview) and data.obj is not None:
        view = ffi.from_buffer(data)
        try:
            address, length = address_of(view), len(view)
        finally:
            ffi.release(view)
        owner = ffi.from_buffer(data.obj)
        start = address - address_of(owner)
        if 0 <= start and start + length <= len(owner):
            return owner + start, length, owner
        ffi.release(owner)
    owner = ffi.from_buffer(data)
    return owner + 0, len(owner), owner
