"""The chunk I/O engines: io_uring, Linux AIO and pread/pwrite behind one async interface.

They reach the compiled module only through ``agent.cache.native`` (its ``lib`` and ``ffi``,
``check_status`` for the C library's statuses, ``buffer_pool`` and ``export_buffer`` for
memory), which stays the one importer of ``agent.cache._pollen_io``.

Theory of operation
-------------------
Three engines share one interface (``name``, ``read``, ``write``, ``statistics``, ``aclose``,
and ``async with``): ``UringEngine`` (io_uring), ``AioEngine`` (Linux AIO) and ``PreadEngine``
(pread/pwrite on worker threads). ``open_engine(kind, ...)`` builds one; ``select_engine``
tries kinds in order (``Config.io_engines``) and reports why the preferred ones did not open;
``choose_engine`` is that decision as a pure function.

* **Completions.** io_uring and AIO signal an eventfd when operations finish. Each async
  engine, entered with ``async with``, owns a nursery with one reaper task that waits for the
  eventfd with ``trio.lowlevel.wait_readable``, collects every finished operation and wakes
  its waiter. No thread waits per request, and the event loop never blocks on the disk.
* **Queue depth.** A ``trio.Semaphore(queue_depth)`` bounds the operations handed to the
  kernel. A waiter takes a token before submitting; the *reaper* gives it back when the kernel
  reports the operation finished. So a cancelled waiter neither frees a token early nor lets
  its buffer go: the pending table keeps the buffer referenced until its completion is reaped.
  (``PreadEngine`` bounds its threads with a ``CapacityLimiter``; a thread call runs to the end
  even when its task is cancelled, which keeps the buffer alive just the same.)
* **O_DIRECT** (``direct=True``, what the cache does when ``cache.aioEnable`` is 1): buffers,
  offsets and lengths given to the kernel are multiples of ``ALIGNMENT``. ``write`` needs an
  aligned *offset*. It writes straight from ``data`` when ``data`` starts at an aligned address
  and the memory under it extends to ``round_up(len(data))`` (an ``alloc_buffer`` view always
  does), and otherwise copies it into an aligned, zero-padded buffer (counted as ``copies``).
  A final partial block is written rounded up, so the file may grow past the layer's size by
  less than ``ALIGNMENT``: preallocate ``round_up(size)`` with ``native.allocate``. ``read``
  accepts any offset and length: it reads the aligned blocks covering them and returns a view
  of the requested bytes.
* **Buffers.** Every ``read`` returns a view of a page-aligned mapping from
  ``native.buffer_pool``, recycled when the last view of it goes away (see ``BufferPool``).
* **Results.** ``read`` returns a ``memoryview`` of exactly the bytes read (shorter than asked
  only at end of file); ``write`` writes everything or raises. Every failure is an ``OSError``
  with the kernel's errno, ``"<op>: <strerror>"`` and the fd, counted in ``errors``.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Self, TypeVar

import trio

from agent.cache.native import (
    ALIGNMENT,
    Buffer,
    address_of,
    buffer_pool,
    check_status,
    export_buffer,
    ffi,
    lib,
    round_up,
)

log = logging.getLogger(__name__)

#: The engine kinds, as ``cache.ioEngine`` names them (``auto`` is resolved by the config).
ENGINE_KINDS: tuple[str, ...] = ("io_uring", "aio", "pread")


_READ: int = lib.POLLEN_OP_READ
_WRITE: int = lib.POLLEN_OP_WRITE


def _check_extent(op: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"{op}: negative offset {offset} or length {length}")


@dataclasses.dataclass
class EngineTotals:
    """What an engine did since it was opened (its `statistics`)."""

    reads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0
    copies: int = 0  # O_DIRECT writes whose data had to be copied into an aligned buffer


class Engine:
    """What the three engines share: alignment, short transfers, counters, the interface.

    A subclass provides ``_transfer``: one read or write of at most ``length`` bytes, which may
    transfer fewer, returning the count or raising ``OSError``.
    """

    name: str = ""
    #: True when ``_transfer`` itself loops until done or end of file (a short read is EOF).
    _short_read_is_eof: bool = False

    def __init__(self, queue_depth: int, *, direct: bool = False) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be at least 1, not {queue_depth}")
        self.queue_depth = queue_depth
        self.direct = direct
        #: Why a preferred engine is not this one (set by ``select_engine``), and caveats.
        self.notes: list[str] = []
        self._closed = False
        self._totals = EngineTotals()

    async def _transfer(
        self, op: int, fd: int, ptr: Any, length: int, offset: int, keep: Any
    ) -> int:
        raise NotImplementedError

    def _op_name(self, op: int) -> str:
        return f"{self.name} {'read' if op == _READ else 'write'}"

    def _ensure_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{self.name} engine is closed")

    async def read(self, fd: int, offset: int, length: int) -> memoryview:
        """Read ``length`` bytes at ``offset``; the result is shorter only at end of file.

        The result is a view of a fresh page-aligned buffer; with ``direct=True`` any offset and
        length work (the aligned blocks around them are read).
        """
        self._ensure_open()
        _check_extent("read", offset, length)
        if length == 0:
            await trio.lowlevel.checkpoint()
            return memoryview(b"")
        if self.direct:
            start = offset - offset % ALIGNMENT
            skip = offset - start
            span = round_up(skip + length)
        else:
            start, skip, span = offset, 0, length
        buffer = buffer_pool.take(span)
        ptr, _, owner = export_buffer(buffer)
        wanted = skip + length
        got = 0
        try:
            while got < wanted:
                asked = span - got
                n = await self._transfer(_READ, fd, ptr + got, asked, start + got, owner)
                got += n
                if n == 0:
                    break  # end of file
                if n < asked and (self._short_read_is_eof or (self.direct and got % ALIGNMENT)):
                    break  # an O_DIRECT read ends off a block boundary only at end of file
        except OSError:
            self._totals.errors += 1
            raise
        end = max(skip, min(got, wanted))
        self._totals.reads += 1
        self._totals.bytes_read += end - skip
        return buffer[skip:end]

    async def write(self, fd: int, offset: int, data: Buffer) -> None:
        """Write all of ``data`` at ``offset``; the caller must not modify ``data`` meanwhile.

        With ``direct=True`` the offset must be a multiple of ``ALIGNMENT`` (``ValueError``
        otherwise); see the module docstring for when ``data`` is copied.
        """
        self._ensure_open()
        _check_extent("write", offset, 0)
        if isinstance(data, memoryview) and not data.contiguous:
            raise ValueError("write: data must be a contiguous buffer")
        src, length, owner = export_buffer(data)
        if length == 0:
            await trio.lowlevel.checkpoint()
            return
        if self.direct:
            if offset % ALIGNMENT:
                raise ValueError(
                    f"write: offset {offset} is not a multiple of {ALIGNMENT} (O_DIRECT)"
                )
            span = round_up(length)
            room = len(owner) - (address_of(src) - address_of(owner))
            if address_of(src) % ALIGNMENT or room < span:
                # Not aligned, or the memory ends before the rounded length: copy into a
                # zero-padded aligned buffer.
                copy = buffer_pool.take(span)
                copy[length:] = bytes(span - length)
                dst, _, owner = export_buffer(copy)
                ffi.memmove(dst, src, length)
                src = dst
                self._totals.copies += 1
        else:
            span = length
        done = 0
        try:
            while done < span:
                n = await self._transfer(_WRITE, fd, src + done, span - done, offset + done, owner)
                if n == 0:
                    raise OSError(errno.EIO, f"{self._op_name(_WRITE)}: wrote nothing", fd)
                done += n
        except OSError:
            self._totals.errors += 1
            raise
        self._totals.writes += 1
        self._totals.bytes_written += length

    def _in_flight(self) -> int:
        raise NotImplementedError

    def _waiting(self) -> int:
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        """Operations in flight and waiting, and totals since the engine was opened.

        ``copies`` counts O_DIRECT writes whose data had to be copied into an aligned buffer;
        ``notes`` says why a preferred engine is not running, and other caveats.
        """
        return {
            "name": self.name,
            "queue_depth": self.queue_depth,
            "direct": self.direct,
            "in_flight": self._in_flight(),
            "waiting": self._waiting(),
            **dataclasses.asdict(self._totals),
            "buffers": buffer_pool.statistics(),
            "notes": list(self.notes),
        }

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _blocking_transfer(op: int, fd: int, ptr: Any, length: int, offset: int) -> int:
    """pread/pwrite on a worker thread, looping in C until done, end of file or an error."""
    done = ffi.new("size_t *")
    if op == _READ:
        check_status(lib.pollen_pread_full(fd, ptr, length, offset, done), "pread", fd)
    else:
        check_status(lib.pollen_pwrite_full(fd, ptr, length, offset, done), "pwrite", fd)
    return int(done[0])


class PreadEngine(Engine):
    """Plain pread/pwrite engine; runs calls in worker threads bounded by a
    ``trio.CapacityLimiter(queue_depth)`` so the event loop never blocks on the disk.

    The limiter is handed to ``trio.to_thread.run_sync`` itself, so it bounds the threads (and
    the disk operations in flight) rather than just the callers. A call that has started in a
    thread runs to completion even if its task is cancelled, which keeps the buffer alive for
    as long as the C code uses it; cancellation takes effect when the call returns.

    Usable with or without ``async with`` (it owns no task); ``direct=True`` works too, with the
    same alignment rules as the other engines.
    """

    name = "pread"
    _short_read_is_eof = True

    def __init__(self, queue_depth: int, *, direct: bool = False) -> None:
        super().__init__(queue_depth, direct=direct)
        self._limiter = trio.CapacityLimiter(queue_depth)

    def _op_name(self, op: int) -> str:
        return "pread" if op == _READ else "pwrite"

    async def _transfer(
        self, op: int, fd: int, ptr: Any, length: int, offset: int, keep: Any
    ) -> int:
        return await trio.to_thread.run_sync(
            _blocking_transfer, op, fd, ptr, length, offset, limiter=self._limiter
        )

    def _in_flight(self) -> int:
        return int(self._limiter.borrowed_tokens)

    def _waiting(self) -> int:
        return self._limiter.statistics().tasks_waiting

    async def aclose(self) -> None:
        """Refuse new operations; calls already in a thread finish on their own.

        The engine owns no fds (callers do), so there is nothing else to release.
        """
        self._closed = True
        await trio.lowlevel.checkpoint()


class _Pending:
    """One operation the kernel holds: its waiter's event, its result, and its buffers."""

    __slots__ = ("event", "status", "result", "keep")

    def __init__(self, keep: Any) -> None:
        self.event = trio.Event()
        self.status = 0
        self.result = 0
        self.keep = keep


class _KernelEngine(Engine):
    """An engine the kernel runs (io_uring or AIO) behind ``struct pollen_engine``.

    Constructing one sets up the ring or context (``OSError`` when the kernel refuses);
    ``async with`` starts the reaper; leaving it (or ``aclose``) waits for the operations in
    flight, stops the reaper and releases the kernel objects.
    """

    _kind: int = 0

    def __init__(self, queue_depth: int, *, direct: bool = False) -> None:
        super().__init__(queue_depth, direct=direct)
        handle_out = ffi.new("struct pollen_engine **")
        eventfd_out = ffi.new("int *")
        check_status(
            lib.pollen_engine_open(self._kind, queue_depth, handle_out, eventfd_out),
            f"open {self.name}",
            None,
        )
        # Released by aclose(); the destructor only runs for an engine dropped unclosed.
        self._handle: Any = ffi.gc(handle_out[0], lib.pollen_engine_close)
        self._eventfd = int(eventfd_out[0])
        self._slots = trio.Semaphore(queue_depth)
        self._pending: dict[int, _Pending] = {}
        self._tags = itertools.count(1)
        self._idle = trio.lowlevel.ParkingLot()
        self._completions = ffi.new("struct pollen_completion[]", queue_depth)
        self._count = ffi.new("size_t *")
        self._stack: AsyncExitStack | None = None
        self._reaper_scope: trio.CancelScope | None = None
        self._abandoned = 0

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._handle is None:
            raise RuntimeError(f"{self.name} engine entered twice, or after aclose")
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self._reaper)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        try:
            await self.aclose()
        finally:
            # The nursery exits as if the body had ended normally, so an exception from the
            # body propagates as it is rather than wrapped in an ExceptionGroup; a failure of
            # the reaper (which cancelled the body) is raised from here instead.
            if stack is not None:
                await stack.aclose()

    async def _reaper(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._reaper_scope = scope
            task_status.started()
            while self._handle is not None:
                await trio.lowlevel.wait_readable(self._eventfd)
                if self._handle is None:
                    break
                self._reap()

    def _reap(self) -> None:
        """Wake the waiter of every finished operation and give its slot back."""
        capacity = len(self._completions)
        while True:
            check_status(
                lib.pollen_engine_reap(self._handle, self._completions, capacity, self._count),
                f"{self.name} reap",
                None,
            )
            count = int(self._count[0])
            for i in range(count):
                completion = self._completions[i]
                pending = self._pending.pop(int(completion.tag))
                pending.status = int(completion.status)
                pending.result = int(completion.result)
                pending.keep = None  # the kernel is done with the buffer
                pending.event.set()
                self._slots.release()
            if count < capacity:
                break
        if not self._pending:
            self._idle.unpark_all()

    def _ensure_open(self) -> None:
        super()._ensure_open()
        if self._reaper_scope is None:
            raise RuntimeError(f"use the {self.name} engine inside `async with`")

    async def _transfer(
        self, op: int, fd: int, ptr: Any, length: int, offset: int, keep: Any
    ) -> int:
        await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise trio.ClosedResourceError(f"{self.name} engine is closed")
        tag = next(self._tags)
        status = lib.pollen_engine_submit(self._handle, op, fd, ptr, length, offset, tag)
        if status != 0:
            self._slots.release()
            check_status(status, self._op_name(op), fd)
        pending = self._pending[tag] = _Pending(keep)
        try:
            await pending.event.wait()
        except trio.Cancelled:
            if not pending.event.is_set():
                self._abandoned += 1  # still in the kernel: the reaper frees it
            raise
        check_status(pending.status, self._op_name(op), fd)
        return pending.result

    def _in_flight(self) -> int:
        return len(self._pending)

    def _waiting(self) -> int:
        return self._slots.statistics().tasks_waiting

    def statistics(self) -> dict[str, Any]:
        stats = super().statistics()
        #: Operations whose waiter was cancelled before the kernel finished them.
        stats["abandoned"] = self._abandoned
        return stats

    async def aclose(self) -> None:
        """Refuse new operations, wait for those in flight, then release the kernel objects.

        If this wait is cancelled, the C close still waits (blocking) for the kernel to finish
        with every buffer before anything is freed.
        """
        self._closed = True
        try:
            while self._pending and self._reaper_scope is not None:
                await self._idle.park()
            await trio.lowlevel.checkpoint()
        finally:
            self._release()

    def _release(self) -> None:
        if self._reaper_scope is not None:
            self._reaper_scope.cancel()
        handle, self._handle = self._handle, None
        if handle is None:
            return
        trio.lowlevel.notify_closing(self._eventfd)
        ffi.gc(handle, None)  # no destructor: closed here, once
        lib.pollen_engine_close(handle)  # waits for the kernel; always frees
        for pending in self._pending.values():  # only after a cancelled aclose
            pending.status = errno.ECANCELED
            pending.keep = None
            pending.event.set()
        self._pending.clear()


class UringEngine(_KernelEngine):
    """io_uring: one ring of ``queue_depth`` entries, completions signalled on an eventfd."""

    name = "io_uring"
    _kind = lib.POLLEN_ENGINE_IO_URING


class AioEngine(_KernelEngine):
    """Linux AIO (io_submit): asynchronous only with ``direct=True``; see ``notes``."""

    name = "aio"
    _kind = lib.POLLEN_ENGINE_AIO

    def __init__(self, queue_depth: int, *, direct: bool = False) -> None:
        super().__init__(queue_depth, direct=direct)
        if not direct:
            self.notes.append(
                "aio without O_DIRECT: the kernel does buffered I/O inside io_submit, "
                "on the event loop's thread"
            )


_ENGINES: dict[str, type[Engine]] = {
    "io_uring": UringEngine,
    "aio": AioEngine,
    "pread": PreadEngine,
}

T = TypeVar("T")


def open_engine(kind: str, queue_depth: int, *, direct: bool = False) -> Engine:
    """The chunk I/O engine named ``kind`` (``io_uring``, ``aio`` or ``pread``).

    Raises ``OSError`` at once when the kernel refuses the kind. Use the result with
    ``async with`` (required for io_uring and aio, which run a reaper task; optional for
    pread)::

        async with engines.open_engine("io_uring", 32, direct=True) as engine:
            data = await engine.read(fd, 0, 4 << 20)
    """
    try:
        engine_class = _ENGINES[kind]
    except KeyError:
        known = ", ".join(ENGINE_KINDS)
        raise ValueError(f"unknown I/O engine {kind!r} (known: {known})") from None
    return engine_class(queue_depth, direct=direct)


def choose_engine(order: Sequence[str], opener: Callable[[str], T]) -> tuple[str, T, list[str]]:
    """Open the first kind in ``order`` that ``opener`` can open.

    Returns the kind, what ``opener`` returned, and one note per kind that failed before it
    (``"io_uring unavailable: [Errno 1] ...; using aio"``). When none opens, raises
    ``OSError`` (the last failure's errno) listing every reason: never a silent fallback.
    """
    if not order:
        raise ValueError("no I/O engine to try")
    failures: list[str] = []
    last: OSError | None = None
    for kind in order:
        if kind not in _ENGINES:
            raise ValueError(f"unknown I/O engine {kind!r} (known: {', '.join(ENGINE_KINDS)})")
        try:
            opened = opener(kind)
        except OSError as exc:
            failures.append(f"{kind} unavailable: {exc}")
            last = exc
            continue
        return kind, opened, [f"{failure}; using {kind}" for failure in failures]
    assert last is not None
    raise OSError(last.errno, "no I/O engine could be opened: " + "; ".join(failures))


def open_preferred_engine(
    order: Sequence[str], queue_depth: int, *, direct: bool = False
) -> Engine:
    """The first engine of ``order`` (``Config.io_engines``) that opens, not yet entered.

    Logs the choice once (INFO) and each reason a preferred kind was passed over (WARNING);
    the reasons stay in ``engine.notes`` and ``statistics()["notes"]`` for the status page.
    Raises ``OSError`` when no kind opens. For callers that build the engine before their event
    loop work starts; enter it with ``async with engine:`` before the first read or write.
    """
    kind, engine, notes = choose_engine(order, lambda k: open_engine(k, queue_depth, direct=direct))
    engine.notes[:0] = notes
    log.info(
        "cache I/O engine: %s (queue depth %d, O_DIRECT %s; tried %s)",
        kind,
        queue_depth,
        "on" if direct else "off",
        ", ".join(order),
    )
    for note in engine.notes:
        log.warning("cache I/O engine: %s", note)
    return engine


@asynccontextmanager
async def select_engine(
    order: Sequence[str], queue_depth: int, *, direct: bool = False
) -> AsyncIterator[tuple[Engine, list[str]]]:
    """``open_preferred_engine``, entered: the running engine and the notes on the kinds that
    did not open (``"io_uring unavailable: ...; using aio"``)::

        async with engines.select_engine(config.io_engines, 32, direct=True) as (engine, notes):
            ...
    """
    engine = open_preferred_engine(order, queue_depth, direct=direct)
    async with engine:
        yield engine, list(engine.notes)
