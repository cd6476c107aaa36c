"""One layer download: from the origin or through the swarm, shared by every reader.

Theory of operation. A `LayerDownload` runs in the fetcher's nursery under a CapacityLimiter
(``proxyConcurrencyLimit``) and a nursery of its own. It asks the upstream for the layer, learns
its size, and then either

- **cache mode**: writes each chunk into the cache as it completes; readers wait for chunk
  *i*, read it from memory (the newest chunks stay hot) or back from the cache and send it, so
  any number of readers share one fetch and memory stays at a few chunks per layer; or
- **stream mode** (the layer cannot be admitted: bigger than the cache, or the cache is full of
  layers being read): passes chunks to the readers that joined before the body started, through
  bounded memory channels; a later reader starts a download of its own.

On a node with roots the chunks come through the swarm instead (`agent.swarm.download` fills
this download through its `LayerSink` methods; a chunk in its last bytes is `landing`, relayed
to peers that ask); a node whose swarm cannot deliver fetches from the origin. Every byte is
hashed on the way in; the last bytes of any response wait until the whole layer matched its
digest (a mismatch drops the layer and cuts every response short).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from agent.cache.chunks import ChunkLayout
from agent.cache.store import CacheEntry
from agent.core.errors import RegistryError
from agent.fetch.chunkfill import ChunkFill
from agent.fetch.fanout import Chunk, Fanout
from agent.fetch.hotchunks import HotChunks
from agent.fetch.model import (
    CacheWriteFailed,
    DownloadProgress,
    FetchContext,
    LayerCorrupt,
    LayerFailed,
    LayerRef,
)
from agent.fetch.rangefetch import discard, resumed_skip
from agent.fetch.window import SLOT_RECHECK, Readers, admission, slot_holder
from agent.http.client import ClientResponse, HttpClientError
from agent.http.groups import first_failure
from agent.observe.auditline import failure_size, url_pathname
from agent.observe.events import LayerReport, LayerTimes
from agent.registry.client import UpstreamUnavailable, backoff_delay, passthrough_error
from agent.swarm.download import HandedHere, SwarmContext, SwarmDownload, SwarmUnavailable

log = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 2  # chunk writes overlapping the network receive, per layer


class LayerDownload:
    """One layer being fetched from its upstream; readers attach to it."""

    def __init__(
        self,
        ref: LayerRef,
        context: FetchContext,
        *,
        cacheable: bool = True,
        swarm: SwarmContext | None = None,
        ring: bool = False,
        unsized: Callable[[], int] = lambda: 0,
    ) -> None:
        self.ref, self.digest, self.upstream, self.repo = ref, ref.digest, ref.upstream, ref.repo
        self._headers, self._expected_size = ref.headers, ref.size
        self._cache, self._registry = context.cache, context.registry
        self._retries, self._unsized = context.retries, unsized  # (layers not sized yet)
        self._observer, self._slow_reader = context.observer, context.slow_reader
        self._cacheable, self._swarm = cacheable, swarm
        # A layer bigger than the cache passes through a ring of slots when it serves peers
        # (a swarm download, or a root's), else streams past the cache. A ring keeps the
        # chunks the swarm still needs from this node (`keep`: a root's tracker says).
        self.may_ring = ring or swarm is not None
        self.keep: Callable[[int], bool] = lambda index: False
        self.times = LayerTimes()  # where this download's time went (per-layer summary)
        self.had_reader = False  # a client read it: the client's summary line covers it
        self._transfer_from: float | None = None
        self._hashed_upto = 0  # chunks [0, n) are in the whole-layer hash
        self.started, self.finished = trio.Event(), trio.Event()  # size known (or failed); done
        self.error: BaseException | None = None
        self.layout: ChunkLayout | None = None
        self.entry: CacheEntry | None = None
        self.stream_mode = self.verified = False
        self._changed = trio.Event()
        self._subscribers = Fanout(self._slow_reader, self._dropped_slow)
        self._hot = HotChunks()  # chunks just arrived: readers close behind, peers
        # Swarm chunks in their last bytes (`landing`), with their bytes in so far (if known).
        self.landing_chunks: dict[int, memoryview | None] = {}
        self._unwritten: set[int] = set()  # in memory, write to disk in progress
        self._write_slots = trio.Semaphore(WRITES_IN_FLIGHT)
        self.readers = Readers()  # a ring's readers (a layer bigger than the cache)
        self._released_any = False  # a ring let a chunk go: late readers join past it
        self._nursery: trio.Nursery | None = None
        self.progress = DownloadProgress(
            digest=str(ref.digest), upstream=ref.upstream.key, started_at=trio.current_time()
        )

    @property
    def joinable(self) -> bool:
        """A new reader may attach (stream mode only before the body starts)."""
        streaming = self.started.is_set() and self.stream_mode
        return self.error is None and not streaming and not self._released_any

    # -- readers ----------------------------------------------------------------------------

    def subscribe(self) -> trio.MemoryReceiveChannel[Chunk | None] | None:
        """Register a reader before the body starts, in case this becomes a stream download."""
        if self.started.is_set():
            return None
        return self._subscribers.subscribe()

    async def wait_chunk(self, index: int, reader: int | None = None) -> None:
        """Wait until chunk `index` can be read: in memory or on disk (unless `reader` was
        dropped for holding the others back: then ReaderDropped)."""
        entry = self.entry
        assert entry is not None
        while not (self.holds(index) or self.readers.is_dropped(reader)):
            self._raise_if_failed()
            ring_full = entry.slots is not None and index >= self.past() + entry.slots
            if ring_full:  # up to a reader behind this one: it has so long to move on
                self._drop_stuck(index - (entry.slots or 0))
            with trio.move_on_after(SLOT_RECHECK if ring_full else math.inf):
                await self._changed.wait()
        self.readers.check(reader)

    async def wait_written(self, index: int) -> None:
        """Wait until chunk `index` is in the cache file (servable to peers)."""
        entry = self.entry
        assert entry is not None
        await self._wait_until(lambda: entry.has_chunk(index))

    def landing(self, index: int, coming: bool, prefix: memoryview | None = None) -> None:
        if coming:
            self.landing_chunks[index] = prefix
        else:
            self.landing_chunks.pop(index, None)
        self._notify()

    async def wait_verified(self) -> None:
        await self._wait_until(lambda: self.verified)

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._raise_if_failed()
            await self._changed.wait()

    def _raise_if_failed(self) -> None:
        """Each reader gets its own exception, of the failure's kind (so it can resume)."""
        err = self.error
        if err is None:
            return
        kind = type(err) if isinstance(err, LayerFailed) else LayerFailed
        raise kind(f"layer {self.digest}: {err}") from err

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        """Wait for the next chunk stored, verification, or failure (the root's tracker)."""
        await self._changed.wait()

    # -- the download ---------------------------------------------------------------------

    async def run(self, limiter: trio.CapacityLimiter) -> None:
        queued = time.perf_counter()
        try:
            async with limiter:
                self._transfer_from = time.perf_counter()
                self.times.add_time("slot", self._transfer_from - queued)
                # A nursery per layer: chunk writes and swarm fetches run beside the receive.
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        if self._swarm is not None and self._cacheable:
                            await self._download_swarm_or_origin()
                        else:
                            await self._download()
                except BaseExceptionGroup as group:
                    raise first_failure(group) from None
                self._end_transfer()
                await self._finish()
        except (RegistryError, LayerFailed, HttpClientError, OSError) as exc:
            self._fail(exc)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._subscribers.close()
            if self.entry is not None:
                self._cache.unpin(self.entry)
            self.started.set()
            self.finished.set()
            self._forget_read_chunks()
            self._notify()
            self._end_transfer()
            if not self.had_reader and self.layout is not None:  # e.g. a root's, for peers
                self._observer.layer_done(
                    LayerReport(
                        digest=str(self.digest),
                        upstream=self.upstream.key,
                        repo=self.repo,
                        size=self.progress.received,
                        seconds=time.perf_counter() - queued,
                        result="ok" if self.verified else "failed",
                        times=self.times,
                        what="fetch",
                    )
                )

    def _end_transfer(self) -> None:
        """Close the transfer stage: slot to last byte, less the hashing done meanwhile."""
        if self._transfer_from is not None:
            wall = time.perf_counter() - self._transfer_from
            self.times.add_time("transfer", wall - self.times.seconds["verify"])
            self._transfer_from = None

    def _got(
        self, source: str, node: str, pathname: str, offset: int, size: int, t0: float
    ) -> None:
        """A chunk arrived from `source` (or failed to: size < 0)."""
        self._observer.fetched(source, node, pathname, offset, size, time.perf_counter() - t0)
        if size > 0:
            self.times.add_bytes(source, size)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        log.warning("layer %s from %s failed: %s", self.digest, self.upstream.key, exc)
        if self.entry is not None:
            self._cache.drop(self.entry)

    def _begin(self, size: int) -> None:
        if self.layout is not None:
            if size != self.layout.size:
                raise LayerCorrupt(
                    f"layer {self.digest}: origin says {size} bytes, the swarm said "
                    f"{self.layout.size}"
                )
            return
        self.layout = layout = ChunkLayout(size=size, chunk_size=self._cache.chunk_size)
        self.progress.size = size
        room, ring, unsized = self._cache.room(), self.may_ring, self._unsized()
        whole, slots = admission(layout.count, layout.chunk_size, size, room, ring, unsized)
        if self._cacheable:
            if whole:
                self.entry = self._cache.admit(str(self.digest), size)
            if self.entry is None and slots is not None:
                self.entry = self._cache.admit(str(self.digest), size, slots=slots)
        if self.entry is None:
            self.stream_mode = True
            self.progress.mode = "stream"
            how = f"does not fit the cache; streaming to {len(self._subscribers)} reader(s)"
        else:
            self.progress.mode = "cache"
            self._subscribers.close()
            how = f"passes through {self.entry.slots} slots"
        if self.entry is None or self.entry.slots:
            log.info("layer %s (%d bytes) %s", self.digest, size, how)
        self.started.set()

    async def _download(self) -> None:
        path = f"/v2/{self.repo}/blobs/{self.digest}"
        fill: ChunkFill | None = None
        offset = failures = origin_bytes = 0
        url = url_pathname(self.upstream.base_url + path)
        gone = self.past()  # after a swarm download: what a ring let go stays gone
        while True:
            chunk_from = time.perf_counter()
            headers = list(self._headers)
            if offset:
                headers.append((b"range", f"bytes={offset}-".encode()))
            try:
                async with self._registry.open(
                    "GET", self.upstream, path, headers, follow_redirects=True
                ) as response:
                    url = url_pathname(response.url)  # the registry's, or object storage's
                    skip = await self._check_response(response, offset, path)
                    if skip:
                        await discard(response, skip)
                    layout = self.layout
                    assert layout is not None
                    if fill is None:  # (`_begin` chose stream or cache mode by now)
                        tabled = self._cache.chunk_tables and not self.stream_mode  # for peers
                        new_buffer = self._cache.new_buffer
                        fill = ChunkFill(layout, self.digest.algorithm, new_buffer, tabled=tabled)
                    while offset < layout.size:
                        n = await response.receive_into(fill.free())
                        if n == 0:
                            raise HttpClientError(f"body ended at {offset} of {layout.size}")
                        self.times.add_time("verify", fill.landed(n))
                        offset += n
                        origin_bytes += n
                        self.progress.received = offset
                        self.progress.sources["origin"] = origin_bytes
                        if fill.full:
                            self._got(
                                "origin", "", url, offset - fill.filled, fill.filled, chunk_from
                            )
                            chunk_from = time.perf_counter()
                        if fill.full and not fill.last:
                            if not self.holds(fill.index) and fill.index >= gone:
                                await self._emit(*fill.done())
                            fill.advance()
                            self._hashed_upto = max(self._hashed_upto, fill.index)
                break
            except HttpClientError as exc:
                if self.layout is None:
                    raise UpstreamUnavailable(f"layer {self.digest}: {exc}") from exc
                filled = fill.filled if fill is not None else 0
                self._got("origin", "", url, offset - filled, failure_size(exc), chunk_from)
                failures += 1
                if failures > self._retries:
                    raise LayerFailed(
                        f"layer {self.digest}: body failed {failures} times: {exc}"
                    ) from exc
                log.info("layer %s: body broke at %d (%s); resuming", self.digest, offset, exc)
                await trio.sleep(backoff_delay(failures - 1, None))
        assert self.layout is not None and fill is not None
        self._check_digest(fill.layer.hexdigest(), "upstream bytes")
        # The last chunk was held back until the digest matched.
        if self.layout.count and not self.holds(self.layout.count - 1):
            await self._emit(*fill.done())
        self._hashed_upto = self.layout.count

    # -- the swarm ---------------------------------------------------------------------------

    async def _download_swarm_or_origin(self) -> None:
        """Fetch through the swarm; go to the origin when no root answers (a pull never fails
        because of P2P) or when this node is the layer's owner (or was handed it)."""
        swarm = self._swarm
        assert swarm is not None
        owners = swarm.roots.owners(str(self.digest))
        if owners and owners[0] == swarm.node and swarm.handed_to(str(self.digest)) is None:
            await self._download()  # we own it: the cluster's one trip to the origin
            return
        try:
            await self._download_swarm()
        except HandedHere:  # handed to this root: the cluster's one trip to the origin
            await self._download()
        except SwarmUnavailable as exc:
            swarm.fell_back(exc.kind)
            log.warning(
                "layer %s: %s; fetching from the origin %s", self.digest, exc, self.upstream.key
            )
            self.progress.mode = "origin-fallback"
            await self._download()

    async def _download_swarm(self) -> None:
        """Fetch the layer's chunks from peers, as the owning root assigns them."""
        swarm = self._swarm
        assert swarm is not None
        authorization = next((v for k, v in self._headers if k == b"authorization"), None)
        download = SwarmDownload(
            swarm=swarm,
            sink=self,
            digest=str(self.digest),
            algorithm=self.digest.algorithm,
            upstream=self.upstream.key,
            repo=self.repo,
            chunk_size=self._cache.chunk_size,
            authorization=authorization,
            expected_size=self._expected_size,
        )
        self.progress.mode = "swarm"
        try:
            self._check_digest(await download.run(), "chunks from the swarm")
        except LayerCorrupt as exc:
            # Every chunk matched the root's table, so the table was wrong: responses in flight
            # are cut (integrity first); the next pull asks the next root, or the registry.
            if download.answered_by is not None:
                swarm.roots.distrust(download.answered_by, str(self.digest), str(exc))
            raise

    # -- what the swarm download fills (agent.swarm.download.LayerSink) -----------------------

    def begin(self, size: int) -> None:
        self._begin(size)

    @property
    def window(self) -> int | None:
        return self.entry.slots if self.entry is not None else None

    def watch_readers(self, moved: Callable[[], None]) -> None:
        self.readers.watch(moved)

    def past(self) -> int:
        return self.readers.past(self._hashed_upto)

    def take_evicted(self) -> set[int]:
        return self.readers.take_evicted()

    def new_buffer(self, length: int) -> Chunk:
        return self._cache.new_buffer(length)

    async def emit(self, index: int, data: Chunk, sha256: str, checksum: int) -> None:
        self.progress.received += len(data)
        await self._emit(index, data, sha256, checksum)

    def reader_at(self, reader: int, index: int) -> None:
        """Reader `reader` has read every chunk below `index` (a ring's slots may free)."""
        self.readers.at(reader, index, trio.current_time())
        self._wake_ring()
        self._forget_read_chunks()

    def reader_gone(self, reader: int) -> None:
        self.readers.gone(reader)
        self._wake_ring()
        self._forget_read_chunks()

    def _forget_read_chunks(self) -> None:
        """Once the download has ended, its chunks leave memory as readers pass them."""
        if self.finished.is_set() and self._hot:
            layout = self.layout
            self._hot.ended(self.readers.past(layout.count) if self.verified and layout else None)

    def _wake_ring(self) -> None:
        # Only a ring's writer waits on readers: other waiters need no wake-up per chunk read.
        if self.entry is not None and self.entry.slots is not None:
            self._notify()

    async def _free_slot(self, index: int) -> None:
        """Wait until the slot of chunk `index` holds nothing a reader or a peer still needs,
        and let its chunk go. Readers that keep it longer than slowReaderTimeout are dropped."""
        entry = self.entry
        assert entry is not None
        while (held := slot_holder(entry, index, self._unwritten)) is not None:
            self._drop_stuck(held)
            if (
                held not in self._unwritten
                and held < self.past()
                and not entry.sending.get(held)
                and (held > index or not self.keep(held))  # a lower chunk comes first
            ):
                self._cache.release_chunk(entry, held)
                self._hot.drop(held)
                self._released_any = True
                self.readers.evicted(held)  # the swarm driver tells the root
                continue
            self._raise_if_failed()
            with trio.move_on_after(SLOT_RECHECK):
                await self._changed.wait()

    def _drop_stuck(self, index: int) -> None:
        """Drop the readers not past chunk `index` that have not moved for slowReaderTimeout."""
        since = trio.current_time() - self._slow_reader
        self._dropped_slow(self.readers.drop_stuck(index, since, self.holds))

    def _dropped_slow(self, count: int) -> None:
        for _ in range(count):
            log.warning("layer %s: a reader held the others back; dropped", self.digest)
            self._observer.limit_hit("proxy", "slow_reader")
        self._notify()  # a dropped reader waiting for a chunk learns it

    def recheck(self) -> None:
        """`keep` may say otherwise now: a ring writer waiting for a slot looks again."""
        if self.entry is not None and self.entry.slots is not None:
            self._notify()

    async def put_back(self, index: int, data: Chunk, sha256: str) -> bool:
        """Put chunk `index` of a ring layer, fetched again, back in its slot once the slot's
        chunk may go (also after the download finished: a root's ring serves on); False when
        the chunk came back meanwhile."""
        entry = self.entry
        if entry is None or entry.slots is None or entry.dropped:
            raise LayerFailed(f"layer {self.digest}: no ring to put chunk {index} back into")
        self._cache.pin(entry)
        try:
            await self._free_slot(index)
            if self.holds(index) or index in self._unwritten:
                return False
            self._unwritten.add(index)  # the slot is ours from here (no await before this)
            try:
                await self._cache.write_chunk(entry, index, data, sha256)
            finally:
                self._unwritten.discard(index)
        finally:
            self._cache.unpin(entry)
        self._notify()
        return True

    async def chunk_bytes(self, index: int) -> Chunk:
        data = self._hot.get(index)
        if data is None:
            assert self.entry is not None
            data = await self._cache.read_chunk(self.entry, index)
        return data

    def held_chunks(self) -> frozenset[int]:
        return self._cache.held_chunks(self.entry) if self.entry is not None else frozenset()

    def hashed(self, count: int) -> None:
        before = self.past()
        self._hashed_upto = count
        if self.entry is not None and self.entry.slots is not None and self.past() > before:
            # `past` moved with the hash: nobody reads a root's ring (a parent tier fills
            # it), and its swarm driver, its window full, would wait for a reader forever.
            self.readers.limit_moved()

    def arrived(self, kind: str, source: str, index: int, size: int, t0: float) -> None:
        assert self.layout is not None
        if size > 0:
            self.progress.sources[kind] = self.progress.sources.get(kind, 0) + size
        self._got(kind, source, "", self.layout.offset(index), size, t0)

    def verify_time(self, seconds: float) -> None:
        self.times.add_time("verify", seconds)

    def _check_digest(self, hexdigest: str, what: str) -> None:
        """The layer's bytes, in order, must hash to its digest."""
        if hexdigest != self.digest.hex:
            self._observer.rejected("layer")
            raise LayerCorrupt(
                f"layer {self.digest}: {what} hash to {self.digest.algorithm}:{hexdigest}"
            )

    async def _check_response(self, response: ClientResponse, offset: int, path: str) -> int:
        """Validate a (possibly resumed) response; returns how many leading bytes to skip."""
        if offset == 0:
            if response.status != 200:
                raise await passthrough_error(response, path)
            size = response.content_length
            if size is None:
                raise UpstreamUnavailable(f"upstream sent {path} without a Content-Length")
            self._begin(size)
            return 0
        return resumed_skip(response, offset, str(self.digest))

    def holds(self, index: int) -> bool:
        """Chunk `index` is here, or on its way to the disk."""
        return self.entry is not None and (index in self._hot or self.entry.has_chunk(index))

    async def _emit(
        self, index: int, data: Chunk, sha256: str | None, checksum: int | None
    ) -> None:
        if self.stream_mode:
            if not await self._subscribers.send(data):
                raise LayerFailed("every reader of a streamed layer went away")
            return
        assert self.entry is not None and self._nursery is not None
        await self._write_slots.acquire()
        if self.entry.slots is not None:
            try:
                await self._free_slot(index)  # taken at once (another writer may want it)
            except BaseException:
                self._write_slots.release()
                raise
        # The chunk is readable from memory at once; its write overlaps the next receive.
        self._hot.add(index, data)
        self._unwritten.add(index)
        self._nursery.start_soon(self._write_chunk, index, data, sha256, checksum)
        self._notify()

    async def _write_chunk(
        self, index: int, data: Chunk, sha256: str | None, checksum: int | None
    ) -> None:
        assert self.entry is not None
        # Every writer brings the table's sha256 where one is kept (the origin's `ChunkFill`
        # hashed it as the bytes landed; the swarm's chunks come checked against it).
        assert sha256 is not None or not self._cache.chunk_tables
        writing = time.perf_counter()
        try:
            await self._cache.write_chunk(self.entry, index, data, sha256, checksum)
        except OSError as exc:
            self._cache.write_failed(exc)
            raise CacheWriteFailed(f"cache write of chunk {index} failed: {exc}") from exc
        finally:
            self._write_slots.release()
            self.times.add_time("disk", time.perf_counter() - writing)
        self._unwritten.discard(index)
        self._hot.written(self._unwritten)
        self._notify()

    def hot_chunk(self, index: int) -> Chunk | None:
        return self._hot.get(index)

    async def _finish(self) -> None:
        if self.stream_mode:
            await self._subscribers.send(None)  # end marker: the layer matched its digest
        else:
            assert self.entry is not None
            if self.entry.slots is None:  # a ring's chunks passed through: nothing to keep
                self._cache.commit(self.entry)
        self.verified = True
        via = "the swarm" if self.progress.mode == "swarm" else self.upstream.key
        elapsed, size = trio.current_time() - self.progress.started_at, self.progress.received
        how = "streamed" if self.stream_mode else "cached"
        log.info("layer %s: %d bytes from %s in %.2fs (%s)", self.digest, size, via, elapsed, how)
        self.progress.mode = "done"
        self._notify()
