"""Single-flight layer downloads under a concurrency limit: the data path's entry point.

`LayerFetcher.open` gives a reader for a layer: from the cache when it is there, else joining
the layer's download in flight (a ring that let its first chunks go: those from the upstream,
the rest from the ring), else starting one in the fetcher's nursery. `ensure` is the
root's way in: the layer's own download from the origin, or through the parent roots' swarm
(the tracker watches it).
"""

from __future__ import annotations

import logging
import math

import trio

from agent.cache.store import CacheEntry
from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.fetch.download import Chunk, LayerDownload
from agent.fetch.model import DownloadProgress, FetchContext, LayerRef
from agent.fetch.rangefetch import refetch_chunk
from agent.fetch.readers import (
    BlobSource,
    CachedBlob,
    DownloadReader,
    LateRingReader,
    ResumingBlob,
)
from agent.http.responses import Headers
from agent.registry.client import UpstreamUnavailable
from agent.registry.routes import Digest
from agent.swarm.download import SwarmContext

log = logging.getLogger(__name__)

# Seconds a peer's request for a chunk in its last bytes here waits for it when there is no
# prefix to relay (then 404: it asks elsewhere); the last bytes take a few plan round trips.
LANDING_WAIT = 5.0


class LayerFetcher:
    """Single-flight layer downloads under a concurrency limit."""

    def __init__(
        self,
        context: FetchContext,
        *,
        concurrency_limit: int,
        swarm: SwarmContext | None = None,
        parent_swarm: SwarmContext | None = None,
    ) -> None:
        self._context = context
        self._cache = context.cache
        self._swarm = swarm
        self._parent_swarm = parent_swarm
        self._limiter = trio.CapacityLimiter(concurrency_limit)
        self._inflight: dict[str, LayerDownload] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> dict[str, object]:
        limiter = self._limiter.statistics()
        return {
            "downloads_in_flight": len(self._inflight),
            "download_slots_used": limiter.borrowed_tokens,
            "download_slots_total": int(limiter.total_tokens)
            if not math.isinf(limiter.total_tokens)
            else -1,
            "downloads_waiting": limiter.tasks_waiting,
        }

    def cached_size(self, digest: str) -> int | None:
        """The size of a layer this node holds or is downloading, without starting anything."""
        entry = self._cache.get(digest)
        if entry is not None:
            return entry.size
        download = self._inflight.get(digest)
        if download is not None and download.layout is not None:
            return download.layout.size
        return None

    def holds(self, digest: str) -> bool:
        """The layer is in this node's cache, whole or in part (a download resumes it), or on
        its way (a download of any reader's): a root that hands it off would cost the origin
        bytes it sent once already."""
        entry = self._cache.peek(digest)
        return (entry is not None and not entry.dropped) or digest in self._inflight

    def hot_chunk(self, entry: CacheEntry, index: int) -> Chunk | None:
        """Chunk `index` of `entry` if a download of it still holds the chunk in memory (it
        just arrived): a peer that asks for it is served without reading the disk."""
        download = self._inflight.get(entry.digest)
        if download is None or download.entry is not entry:
            return None
        return download.hot_chunk(index)

    def arriving(self, entry: CacheEntry, index: int) -> memoryview | None:
        """The bytes in so far of chunk `index` of `entry` if it is in its last bytes here."""
        download = self._inflight.get(entry.digest)
        if download is None or download.entry is not entry:
            return None
        return download.landing_chunks.get(index)

    async def wait_landed(self, entry: CacheEntry, index: int) -> bool:
        """Whether chunk `index` of `entry` is here (verified in memory, or in the cache), once
        it landed if it is in its last bytes here (the root counts this node as its holder from
        then: cut-through), for LANDING_WAIT at most; at once for a chunk not on its way."""
        download = self._inflight.get(entry.digest)
        if download is None or download.entry is not entry:
            return entry.has_chunk(index)
        with trio.move_on_after(LANDING_WAIT):
            while index in download.landing_chunks and download.error is None:
                if download.holds(index):  # verified, in memory or on disk
                    break
                await download.wait_change()
            return download.holds(index)
        log.info("layer %s: chunk %d still not here after %gs", entry.digest, index, LANDING_WAIT)
        return entry.has_chunk(index)

    def in_flight(self) -> list[DownloadProgress]:
        return [d.progress for d in self._inflight.values()]

    async def open(
        self,
        *,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        headers: Headers,
        size: int | None = None,
    ) -> BlobSource:
        """A reader for the layer: from the cache, joining a download, or starting one.
        `size`: the layer's size as the registry told this node, when it did."""
        ref = LayerRef(digest=digest, upstream=upstream, repo=repo, headers=headers, size=size)

        async def reopen(cacheable: bool) -> BlobSource:
            return await self._open(ref, cacheable=cacheable)

        return ResumingBlob(await self._open(ref), reopen)

    async def _open(self, ref: LayerRef, *, cacheable: bool = True) -> BlobSource:
        entry = self._cache.get(str(ref.digest)) if cacheable else None
        if entry is not None:
            self._cache.pin(entry)
            return CachedBlob(self._cache, entry)
        late = self._late_reader(ref) if cacheable else None
        if late is not None:
            return late
        download = self._join_or_start(ref, cacheable=cacheable, swarm=self._client_swarm(ref))
        channel = download.subscribe()
        try:
            await download.started.wait()
            if download.layout is None:
                raise _failure(download)
            return DownloadReader(download, self._cache, channel)
        except BaseException:
            if channel is not None:
                channel.close()
            raise

    def _client_swarm(self, ref: LayerRef) -> SwarmContext | None:
        """The swarm a client's download goes through: the node's roots; but on a root with
        parent roots, a layer this root owns among its own roots comes the way its tracker
        would fetch it, through the parent tier, as does any layer on a root with no roots of
        its own (else a pull on the root itself would be a second trip to the origin)."""
        swarm, parent = self._swarm, self._parent_swarm
        if swarm is None or parent is None:
            return swarm or parent
        owners = swarm.roots.owners(str(ref.digest))
        return parent if owners and owners[0] == swarm.node else swarm

    def _late_reader(self, ref: LayerRef) -> LateRingReader | None:
        """A reader of the layer's ring download in flight that already let its first chunks
        go: the rest from the ring, the chunks before from the upstream (checked against the
        chunk table, so only when the table covers them)."""
        download = self._inflight.get(str(ref.digest))
        if download is None or download.joinable or download.error is not None:
            return None
        entry = download.entry
        if entry is None or entry.slots is None or entry.dropped:
            return None
        since = download.past()
        if any(self._cache.chunk_sha256(entry, i) is None for i in range(since)):
            return None  # a ring filled from the origin on an agent keeps no table
        return LateRingReader(download, self._context, ref, since)

    def _join_or_start(
        self, ref: LayerRef, *, cacheable: bool, swarm: SwarmContext | None, ring: bool = False
    ) -> LayerDownload:
        """The layer's download in flight (single flight), or a new one started in our nursery.
        A download past the cache (`cacheable=False`) is never shared."""
        key = str(ref.digest)
        download = self._inflight.get(key) if cacheable else None
        if download is not None and download.joinable:
            return download
        if download is not None and download.entry is not None and not download.entry.dropped:
            # A ring already let chunks go and its chunk table does not cover them (see
            # `_late_reader`): this late reader gets a download of its own past the cache.
            cacheable = False
        download = LayerDownload(
            ref,
            self._context,
            cacheable=cacheable,
            swarm=swarm,
            ring=ring,
            unsized=lambda: self._unsized(download),
        )
        if cacheable:
            self._inflight[key] = download
        assert self._nursery is not None, "LayerFetcher.run is not running"
        self._nursery.start_soon(self._run_download, download)
        return download

    def _unsized(self, download: LayerDownload) -> int:
        """The other downloads in flight that may take a ring and whose sizes are not known
        yet: a layer admitted whole must leave them room (`agent.fetch.window.admission`)."""
        return sum(
            1
            for other in self._inflight.values()
            if other is not download and other.may_ring and not other.started.is_set()
        )

    async def ensure(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: Headers
    ) -> LayerDownload | CacheEntry:
        """The layer in this node's cache, or its download once its size is known (the
        root's tracker): from the origin, or on a root with parent roots through the parent
        roots' swarm, where the owner goes to the origin (`LayerDownload` falls back to the
        origin when that swarm cannot deliver). A download this node's own client started
        through its roots is joined as it is."""
        entry = self._cache.get(str(digest))
        if entry is not None:
            return entry
        ref = LayerRef(digest=digest, upstream=upstream, repo=repo, headers=headers)
        parent = self._parent_swarm
        download = self._join_or_start(ref, cacheable=True, swarm=parent, ring=True)
        await download.started.wait()
        if download.layout is None or download.error is not None:
            raise _failure(download)
        if download.stream_mode:
            raise RegistryError(502, "UNAVAILABLE", f"layer {digest} does not fit the cache")
        return download

    async def refetch(self, download: LayerDownload, index: int) -> int:
        """Fetch chunk `index` of a root's ring layer again from the origin (the swarm lost
        it); the bytes the origin sent."""
        return await refetch_chunk(self._context, download, index)

    async def _run_download(self, download: LayerDownload) -> None:
        key = str(download.digest)
        try:
            await download.run(self._limiter)
        finally:
            if self._inflight.get(key) is download:
                del self._inflight[key]


def _failure(download: LayerDownload) -> RegistryError:
    """What a client is told when a download failed before its first byte: the upstream's own
    answer when there was one, else 502."""
    err = download.error
    if isinstance(err, RegistryError):
        return err
    return UpstreamUnavailable(f"layer {download.digest}: {err}")
