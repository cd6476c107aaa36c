"""What a client reads a layer through: the cache, a download in flight, or both in turn.

A `BlobSource` yields the bytes of a range in order. `CachedBlob` reads a verified layer from
the cache, checking every chunk; `DownloadReader` follows a `LayerDownload` (waiting for each
chunk, and for the whole layer's digest before the last bytes); `ResumingBlob` wraps either and
carries on from the byte reached when a failure is ours (a corrupt cache chunk, a cache that
cannot store), not the upstream's. `LateRingReader` joins a ring that already let the first
chunks go.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import trio

from agent.cache.store import CacheEntry, ChunkCache, ChunkCorrupt
from agent.fetch.download import Chunk, LayerDownload
from agent.fetch.model import CacheWriteFailed, FetchContext, LayerFailed, LayerRef
from agent.fetch.rangefetch import checked_chunks
from agent.http.responses import FileRegion
from agent.observe.events import LayerTimes

log = logging.getLogger(__name__)

MAX_RESUMES = 2


class BlobSource:
    """What a reader holds: a layer's size and its bytes, from the cache or a download."""

    size: int

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        raise NotImplementedError
        yield b""  # pragma: no cover

    def close(self) -> None:
        raise NotImplementedError

    def account(self, times: LayerTimes) -> None:
        """Add where this reader's bytes came from and its time went (per-layer summary)."""


class CachedBlob(BlobSource):
    """A verified layer in the cache; every chunk is checked on its way out.

    Through the page cache (the default cache mode) a chunk is checked where it lies and sent
    from there with sendfile (a `FileRegion`): no copy through Python, none into the socket.
    With O_DIRECT (cache.aioEnable) the page cache holds none of it: the chunk is read into
    memory, checked and written from there, as a buffered read would fill the page cache."""

    def __init__(self, cache: ChunkCache, entry: CacheEntry) -> None:
        self.cache = cache
        self.entry = entry
        self.size = entry.size
        self._closed = False
        self._times = LayerTimes()
        self._fd: int | None = None

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview | FileRegion]:
        layout = self.entry.layout
        for index in layout.covering(start, end):
            reading = time.perf_counter()
            piece: memoryview | FileRegion
            if self.cache.direct:
                data = await self.cache.read_chunk(self.entry, index)
                piece = _slice(data, layout.offset(index), start, end)
            else:
                piece = await self._region(index, start, end)
            self._times.add_time("disk", time.perf_counter() - reading)
            self._times.add_bytes("cache", len(piece))
            yield piece

    async def _region(self, index: int, start: int, end: int) -> FileRegion:
        """The part of chunk `index` inside [start, end), checked where it lies."""
        if self._fd is None:
            try:
                self._fd = self.cache.open_for_reading(self.entry)
            except OSError as exc:  # vanished
                raise self.cache.unreadable(self.entry, index, exc) from exc
        await self.cache.check_in_place(self.entry, index, self._fd)
        first = self.entry.layout.offset(index)
        lo, hi = max(start, first), min(end, first + self.entry.layout.length(index))
        return FileRegion(
            fd=self._fd, offset=self.entry.file_offset(index) + lo - first, length=hi - lo
        )

    def account(self, times: LayerTimes) -> None:
        times.merge(self._times)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
            self.cache.unpin(self.entry)


class ResumingBlob(BlobSource):
    """A reader that survives the failures that are ours, not the upstream's.

    A chunk that fails its check in the cache, or a cache that cannot store a chunk, must not
    cost the client its download: the reader opens the layer again (from a fresh download,
    cached or not) and carries on from the byte it had reached.
    """

    def __init__(self, inner: BlobSource, reopen: Callable[[bool], Awaitable[BlobSource]]) -> None:
        self._current = inner
        self._reopen = reopen
        self.size = inner.size
        self.resumes = 0
        self._replaced: list[BlobSource] = []

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        position = start
        while True:
            try:
                async with aclosing(self._current.read(position, end)) as pieces:
                    async for piece in pieces:
                        position += len(piece)
                        yield piece
                return
            except (ChunkCorrupt, CacheWriteFailed) as exc:
                if self.resumes >= MAX_RESUMES:
                    raise
                self.resumes += 1
                cacheable = isinstance(exc, ChunkCorrupt)
                log.warning(
                    "%s; reading on from byte %d (%s)",
                    exc,
                    position,
                    "fetching again" if cacheable else "without the cache",
                )
                replacement = await self._reopen(cacheable)
                self._current.close()
                self._replaced.append(self._current)
                self._current = replacement

    def close(self) -> None:
        self._current.close()

    def account(self, times: LayerTimes) -> None:
        for source in (*self._replaced, self._current):
            source.account(times)


class DownloadReader(BlobSource):
    def __init__(
        self,
        download: LayerDownload,
        cache: ChunkCache,
        channel: trio.MemoryReceiveChannel[Chunk | None] | None,
        *,
        since: int = 0,
    ) -> None:
        assert download.layout is not None
        self.download = download
        self.cache = cache
        self.size = download.layout.size
        self._channel = channel
        self._entry = download.entry
        if self._entry is not None:
            cache.pin(self._entry)
        download.progress.readers += 1
        download.had_reader = True
        download.reader_at(id(self), since)  # a ring keeps chunks until this reader is past
        self._closed = False
        self._disk_seconds = 0.0

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        if self.download.stream_mode:
            async for piece in self._read_stream(start, end):
                yield piece
            return
        layout = self.download.layout
        entry = self._entry
        assert layout is not None and entry is not None
        indexes = layout.covering(start, end)
        if not indexes:
            await self.download.wait_verified()
        else:
            self.download.reader_at(id(self), indexes[0])
        follow = _follow(self.download, self.cache, entry, indexes, id(self))
        async with aclosing(follow) as chunks:
            async for index, data, disk_seconds in chunks:
                self._disk_seconds += disk_seconds
                yield _slice(data, layout.offset(index), start, end)

    async def _read_stream(self, start: int, end: int) -> AsyncIterator[memoryview]:
        # Consume every chunk (the download must not stall on us) and hold the last piece
        # of our range until the end marker says the layer matched its digest.
        assert self._channel is not None
        offset = 0
        held: memoryview | None = None
        async with self._channel:
            async for data in self._channel:
                if data is None:
                    if held:
                        yield held
                    return
                piece = (
                    _slice(data, offset, start, end)
                    if offset < end and offset + len(data) > start
                    else b""
                )
                offset += len(data)
                if piece:
                    if held:
                        yield held
                    held = piece
        why = self.download.error or "this reader held the others back too long and was dropped"
        raise LayerFailed(f"layer {self.download.digest} failed: {why}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.download.progress.readers -= 1
        self.download.reader_gone(id(self))
        if self._channel is not None:
            self._channel.close()
        if self._entry is not None:
            self.cache.unpin(self._entry)

    def account(self, times: LayerTimes) -> None:
        times.merge(self.download.times)  # the download this reader shared: slot, transfer...
        times.add_time("disk", self._disk_seconds)


class LateRingReader(DownloadReader):
    """A reader that came after a ring let the layer's first chunks go: it reads the chunks
    below `since` (the first chunk the ring still keeps for its readers) from the upstream in
    one `Range` request, each checked against the chunk table, and the rest from the ring as
    any reader does; its last bytes wait for the ring download's whole-layer digest. So a late
    client costs the origin the chunks it missed, not a second whole download."""

    def __init__(
        self, download: LayerDownload, context: FetchContext, ref: LayerRef, since: int
    ) -> None:
        super().__init__(download, context.cache, None, since=since)
        assert self._entry is not None
        self._ring_entry = self._entry
        self._context, self._ref, self._since = context, ref, since
        self._times = LayerTimes()

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        layout = self.download.layout
        assert layout is not None
        indexes = layout.covering(start, end)
        if not indexes:
            await self.download.wait_verified()
        missed = indexes[: max(0, min(len(indexes), self._since - indexes.start))]
        if missed:
            fetching = time.perf_counter()
            chunks = checked_chunks(
                self._context, self._ref, self._ring_entry, missed[0], missed[-1] + 1
            )
            async with aclosing(chunks) as pieces:
                async for index, data, _ in pieces:
                    self._times.add_bytes("origin", len(data))
                    if index == indexes[-1]:
                        await self.download.wait_verified()
                    yield _slice(data, layout.offset(index), start, end)
            self._times.add_time("transfer", time.perf_counter() - fetching)
        rest = indexes[len(missed) :]  # from the ring, as any reader of it
        follow = _follow(self.download, self.cache, self._ring_entry, rest, id(self))
        async with aclosing(follow) as chunks:
            async for index, data, disk_seconds in chunks:
                self._disk_seconds += disk_seconds
                yield _slice(data, layout.offset(index), start, end)

    def account(self, times: LayerTimes) -> None:
        times.merge(self._times)
        super().account(times)


async def _follow(
    download: LayerDownload, cache: ChunkCache, entry: CacheEntry, indexes: range, reader: int
) -> AsyncIterator[tuple[int, Chunk | bytes, float]]:
    """The chunks `indexes` of a download as they come (from memory, or the disk: with the
    seconds that took), the last one only once the whole layer matched its digest; `reader`
    moves past each chunk once its bytes are the client's (a ring may let it go then)."""
    for index in indexes:
        await download.wait_chunk(index, reader)
        if index == indexes[-1]:
            await download.wait_verified()
        data: Chunk | bytes | None = download.hot_chunk(index)
        seconds = 0.0
        if data is None:
            reading = time.perf_counter()
            data = await cache.read_chunk(entry, index)
            seconds = time.perf_counter() - reading
        yield index, data, seconds
        download.reader_at(reader, index + 1)


def _slice(data: bytes | Chunk, data_offset: int, start: int, end: int) -> memoryview:
    """The part of `data` (which starts at `data_offset` in the layer) inside [start, end)."""
    lo = max(start - data_offset, 0)
    hi = min(end - data_offset, len(data))
    return memoryview(data)[lo:hi]
