"""Layer downloads: one per layer at a time (single flight), shared by every reader.

Theory of operation. `LayerFetcher` owns a nursery; each `LayerDownload` runs in it under a
CapacityLimiter (``proxyConcurrencyLimit``) and a nursery of its own. A download asks the
upstream for the layer, learns its size, and then either

- **cache mode**: writes each chunk into the cache as it completes; readers wait for chunk
  *i*, read it back from the cache and send it, so any number of readers share one fetch and
  memory stays at one chunk per reader; or
- **stream mode** (the layer cannot be admitted: bigger than the cache, or the cache is full of
  layers being read): passes chunks to the readers that joined before the body started, through
  bounded memory channels; a later reader starts a download of its own.

Every byte is hashed on the way in. The last bytes of any response wait until the whole layer
matched its digest; a mismatch drops the layer and cuts every response short, so no client ever
completes a download of wrong bytes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from agent.cache.chunks import ChunkLayout
from agent.cache.store import CacheEntry, ChunkCache, ChunkCorrupt
from agent.core.config import Upstream
from agent.core.errors import RegistryError
from agent.http.client import ClientResponse, HttpClientError
from agent.observe.auditline import failure_size, url_pathname
from agent.observe.events import NULL_OBSERVER, LayerReport, LayerTimes, Observer
from agent.registry.client import (
    RegistryClient,
    UpstreamUnavailable,
    backoff_delay,
    passthrough_error,
)
from agent.registry.routes import Digest
from agent.swarm.client import P2PClient, PeerError
from agent.swarm.protocol import MAX_REPORTS, PlanTarget, clip_ranges
from agent.swarm.roots import RootSet

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
Chunk = bytearray | memoryview  # one chunk's bytes; aligned memory when the cache is O_DIRECT
STREAM_CHANNEL_CHUNKS = 1
HOT_CHUNKS = 2  # chunks already on disk kept in memory for readers close behind
WRITES_IN_FLIGHT = 2  # chunk writes overlapping the network receive, per layer


class LayerFailed(Exception):
    """The download failed after responses started; readers must cut their responses short."""


class LayerCorrupt(LayerFailed):
    """The upstream's bytes did not match the layer's digest."""


class CacheWriteFailed(LayerFailed):
    """The cache could not store a chunk (disk full, directory gone): readers carry on from a
    download that does not cache."""


MAX_RESUMES = 2


class SwarmUnavailable(Exception):
    """The swarm cannot deliver this layer (no root answers, it does not fit); the download
    goes to the origin instead."""


@dataclass(eq=False, kw_only=True)
class SwarmContext:
    """What a node needs to fetch layers through the swarm."""

    node: str  # this node's id, nodeIP:p2pPort
    roots: RootSet
    client: P2PClient
    # Plan demand: one transfer at a time (links do best with one transfer each, see
    # agent/swarm/schedule.py) plus a spare the root uses for a second source when one runs late.
    parallel: int = 2
    chunk_timeout: float = 15.0
    plan_timeout: float = 10.0
    fallbacks: int = 0  # layers fetched from the origin because no root answered
    peer_bytes: int = 0


@dataclass(kw_only=True)
class DownloadProgress:
    """What `pollen status` and the per-layer summary show about a download."""

    digest: str
    upstream: str
    size: int | None = None
    received: int = 0
    mode: str = "starting"
    started_at: float = 0.0
    readers: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # bytes by origin, root, peer


class LayerDownload:
    """One layer being fetched from its upstream; readers attach to it."""

    def __init__(
        self,
        *,
        digest: Digest,
        upstream: Upstream,
        repo: str,
        headers: Headers,
        cache: ChunkCache,
        registry: RegistryClient,
        retries: int,
        cacheable: bool = True,
        swarm: SwarmContext | None = None,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.digest = digest
        self._cacheable = cacheable
        self._swarm = swarm
        self._observer = observer
        self.times = LayerTimes()  # where this download's time went (per-layer summary)
        self.had_reader = False  # a client read it: the client's summary line covers it
        self._transfer_from: float | None = None
        self._hashed_upto = 0  # chunks [0, n) are in the whole-layer hash
        self.upstream = upstream
        self.repo = repo
        self._headers = headers
        self._cache = cache
        self._registry = registry
        self._retries = retries
        self.started = trio.Event()  # size known (or failed before any byte)
        self.finished = trio.Event()
        self.error: BaseException | None = None
        self.layout: ChunkLayout | None = None
        self.entry: CacheEntry | None = None
        self.stream_mode = False
        self.verified = False
        self._changed = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[Chunk | None]] = []
        self._hot: OrderedDict[int, Chunk] = OrderedDict()
        self._unwritten: set[int] = set()  # in memory, write to disk in progress
        self._write_slots = trio.Semaphore(WRITES_IN_FLIGHT)
        self._nursery: trio.Nursery | None = None
        self.progress = DownloadProgress(
            digest=str(digest), upstream=upstream.key, started_at=trio.current_time()
        )

    @property
    def joinable(self) -> bool:
        """A new reader may attach (stream mode only before the body starts)."""
        return self.error is None and not (self.started.is_set() and self.stream_mode)

    # -- readers ----------------------------------------------------------------------------

    def subscribe(self) -> trio.MemoryReceiveChannel[Chunk | None] | None:
        """Register a reader before the body starts, in case this becomes a stream download."""
        if self.started.is_set():
            return None
        send, receive = trio.open_memory_channel[Chunk | None](STREAM_CHANNEL_CHUNKS)
        self._subscribers.append(send)
        return receive

    async def wait_chunk(self, index: int) -> None:
        """Wait until chunk `index` can be read: in memory or on disk."""
        while True:
            assert self.entry is not None
            if index in self._hot or self.entry.has_chunk(index):
                return
            self._raise_if_failed()
            await self._changed.wait()

    async def wait_written(self, index: int) -> None:
        """Wait until chunk `index` is in the cache file (servable to peers)."""
        while True:
            assert self.entry is not None
            if self.entry.has_chunk(index):
                return
            self._raise_if_failed()
            await self._changed.wait()

    async def wait_verified(self) -> None:
        while not self.verified:
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
                # A nursery per layer: chunk writes and the swarm's chunk fetches run here
                # beside the receive. It closes when every one of them ended.
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
            for send in self._subscribers:
                send.close()
            if self.entry is not None:
                self._cache.unpin(self.entry)
            self.started.set()
            self.finished.set()
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
        self.layout = ChunkLayout(size=size, chunk_size=self._cache.chunk_size)
        self.progress.size = size
        self.entry = self._cache.admit(str(self.digest), size) if self._cacheable else None
        if self.entry is None:
            self.stream_mode = True
            self.progress.mode = "stream"
            log.info(
                "layer %s (%d bytes) does not fit the cache; streaming to %d reader(s)",
                self.digest,
                size,
                len(self._subscribers),
            )
        else:
            self.progress.mode = "cache"
            for send in self._subscribers:
                send.close()
            self._subscribers.clear()
        self.started.set()

    async def _download(self) -> None:
        path = f"/v2/{self.repo}/blobs/{self.digest}"
        hasher = hashlib.new(self.digest.algorithm)
        offset = 0
        chunk_index = 0
        chunk: Chunk = bytearray()
        filled = 0
        failures = 0
        origin_bytes = 0
        url = url_pathname(self.upstream.base_url + path)
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
                        await _discard(response, skip)
                    layout = self.layout
                    assert layout is not None
                    while offset < layout.size:
                        if filled == len(chunk):
                            # A fresh buffer per chunk: emitted chunks are shared, never reused.
                            chunk = self._cache.new_buffer(layout.length(chunk_index))
                            filled = 0
                        view = memoryview(chunk)[filled:]
                        n = await response.receive_into(view)
                        if n == 0:
                            raise HttpClientError(f"body ended at {offset} of {layout.size}")
                        hashing = time.perf_counter()
                        hasher.update(view[:n])
                        self.times.add_time("verify", time.perf_counter() - hashing)
                        filled += n
                        offset += n
                        origin_bytes += n
                        self.progress.received = offset
                        self.progress.sources["origin"] = origin_bytes
                        if filled == len(chunk):
                            self._got("origin", "", url, offset - filled, filled, chunk_from)
                            chunk_from = time.perf_counter()
                        if filled == len(chunk) and chunk_index < layout.count - 1:
                            if not self._holds(chunk_index):
                                await self._emit(chunk_index, chunk)
                            chunk_index += 1
                            self._hashed_upto = chunk_index
                break
            except HttpClientError as exc:
                if self.layout is None:
                    raise UpstreamUnavailable(f"layer {self.digest}: {exc}") from exc
                self._got("origin", "", url, offset - filled, failure_size(exc), chunk_from)
                failures += 1
                if failures > self._retries:
                    raise LayerFailed(
                        f"layer {self.digest}: body failed {failures} times: {exc}"
                    ) from exc
                log.info("layer %s: body broke at %d (%s); resuming", self.digest, offset, exc)
                await trio.sleep(backoff_delay(failures - 1, None))
        assert self.layout is not None
        if hasher.hexdigest() != self.digest.hex:
            self._observer.rejected("layer")
            raise LayerCorrupt(
                f"layer {self.digest}: upstream bytes hash to "
                f"{self.digest.algorithm}:{hasher.hexdigest()}"
            )
        # The last chunk was held back until the digest matched.
        if self.layout.count and not self._holds(self.layout.count - 1):
            await self._emit(self.layout.count - 1, chunk)
        self._hashed_upto = self.layout.count

    # -- the swarm ---------------------------------------------------------------------------

    async def _download_swarm_or_origin(self) -> None:
        """Fetch through the swarm; go to the origin when no root answers (a pull never fails
        because of P2P) or when this node is the layer's owner."""
        swarm = self._swarm
        assert swarm is not None
        owners = swarm.roots.owners(str(self.digest))
        if owners and owners[0] == swarm.node:
            await self._download()  # we own it: the cluster's one trip to the origin
            return
        try:
            await self._download_swarm()
        except SwarmUnavailable as exc:
            swarm.fallbacks += 1
            log.warning(
                "layer %s: %s; fetching from the origin %s", self.digest, exc, self.upstream.key
            )
            self.progress.mode = "origin-fallback"
            await self._download()

    async def _download_swarm(self) -> None:
        """Fetch the layer's chunks from peers, as the owning root assigns them.

        Two kinds of plan requests run side by side: one standing request (``poll``) that the
        root holds until it has work for us, and an immediate report each time a transfer
        ends, so the sources' upload slots free at once and new work arrives without delay.
        """
        swarm = self._swarm
        assert swarm is not None and self._nursery is not None
        layer_nursery = self._nursery
        digest = str(self.digest)
        hashes: dict[int, str] = {}
        reports_done: list[tuple[int, str]] = []
        reports_failed: list[tuple[int, str, bool]] = []
        fetching: dict[int, dict[str, trio.CancelScope]] = {}
        authorization = next((v for k, v in self._headers if k == b"authorization"), None)
        hasher = hashlib.new(self.digest.algorithm)
        hash_lock = trio.Lock()
        complete = trio.Event()
        slot_freed = trio.Event()
        tell_root = {"have": True}  # the next request says what we hold (after a root change)

        def in_flight() -> int:
            return sum(len(s) for s in fetching.values())

        def finished() -> bool:
            return self.layout is not None and self._hashed_upto == self.layout.count

        async def advance_hash() -> None:
            # The whole-layer digest needs the bytes in order; chunks arrive out of order.
            async with hash_lock:
                layout, entry = self.layout, self.entry
                assert layout is not None and entry is not None
                while self._hashed_upto < layout.count and self._holds(self._hashed_upto):
                    index = self._hashed_upto
                    data = self._hot.get(index)
                    if data is None:
                        data = await self._cache.read_chunk(entry, index)
                    hashing = time.perf_counter()
                    hasher.update(data)
                    self.times.add_time("verify", time.perf_counter() - hashing)
                    self._hashed_upto += 1
                self._evict_hot()
                if finished():
                    complete.set()

        async def fetch(index: int, source: str, scope: trio.CancelScope) -> None:
            layout = self.layout
            assert layout is not None
            buffer = self._cache.new_buffer(layout.length(index))
            t0 = time.perf_counter()
            kind = "root" if source in swarm.roots.addresses else "peer"
            try:
                with scope:
                    with trio.fail_after(swarm.chunk_timeout):
                        await swarm.client.fetch_chunk(
                            source, digest, index, len(buffer), into=memoryview(buffer)
                        )
                if scope.cancelled_caught:
                    return  # the endgame's loser: the chunk came from elsewhere
                hashing = time.perf_counter()
                sha = hashlib.sha256(buffer).hexdigest()
                self.times.add_time("verify", time.perf_counter() - hashing)
                if sha != hashes.get(index):
                    log.warning(
                        "layer %s: %s sent a bad chunk %d; dropping it", digest, source, index
                    )
                    self._observer.rejected("peer")
                    self._got(kind, source, "", layout.offset(index), -1, t0)
                    reports_failed.append((index, source, True))
                    return
                if not self._holds(index):
                    for other, other_scope in fetching.get(index, {}).items():
                        if other != source:
                            other_scope.cancel()
                    await self._emit(index, buffer, sha)
                    self.progress.received += len(buffer)
                    self.progress.sources[kind] = self.progress.sources.get(kind, 0) + len(buffer)
                    swarm.peer_bytes += len(buffer)
                    self._got(kind, source, "", layout.offset(index), len(buffer), t0)
                # Report it only once it is on disk: from then on the root sends peers here,
                # and the P2P port serves chunks from the cache file.
                await self.wait_written(index)
                reports_done.append((index, source))
                await advance_hash()
            except (PeerError, trio.TooSlowError) as exc:
                log.info("layer %s: chunk %d from %s failed: %s", digest, index, source, exc)
                self._got(kind, source, "", layout.offset(index), failure_size(exc), t0)
                reports_failed.append((index, source, False))
            finally:
                sources = fetching.get(index, {})
                sources.pop(source, None)
                if not sources:
                    fetching.pop(index, None)
                slot_freed.set()
                if not complete.is_set():
                    try:
                        planners.start_soon(ask, False)  # report it now
                    except RuntimeError:
                        pass  # the planners are gone: the layer is done or failed

        def take_reports() -> tuple[list[tuple[int, str]], list[tuple[int, str, bool]]]:
            done = reports_done[:MAX_REPORTS]
            del reports_done[: len(done)]
            failed = reports_failed[: MAX_REPORTS - len(done)]
            del reports_failed[: len(failed)]
            return done, failed

        async def ask(poll: bool) -> int:
            """One plan request; returns how many transfers it started."""
            owners = swarm.roots.owners(digest)
            if not owners:
                raise SwarmUnavailable("no root answers")
            root = owners[0]
            done, failed = take_reports()
            if not poll and not done and not failed:
                return 0
            held = None
            if tell_root["have"] and self.layout is not None:
                held = clip_ranges(i for i in range(self.layout.count) if self._holds(i))
            request = PlanTarget(
                digest=digest,
                upstream=self.upstream.key,
                repo=self.repo,
                want=0 if complete.is_set() else max(0, swarm.parallel - in_flight()),
                have=held,
                done=tuple(done),
                failed=tuple(failed),
                poll=poll,
            )
            try:
                with trio.fail_after(swarm.plan_timeout):
                    plan = await swarm.client.plan(root, request, authorization)
            except (PeerError, trio.TooSlowError) as exc:
                swarm.roots.bench(root, str(exc))
                reports_done[:0] = done
                reports_failed[:0] = failed
                tell_root["have"] = True
                return 0
            if held is not None:
                tell_root["have"] = False
            if plan.error is not None:
                status = plan.error_status or 502
                if status in (401, 403) and authorization and not swarm.client.tls:
                    # The root fetched without the client's credentials (they never cross the
                    # network in clear): this layer is the client's to fetch itself.
                    raise SwarmUnavailable(
                        f"root {root} may not read it without credentials, and the P2P port "
                        "has no TLS to pass them"
                    )
                code = "UNAVAILABLE" if status >= 500 else "DENIED"
                raise RegistryError(status, code, f"root {root}: {plan.error}")
            if plan.size is None:
                return 0
            if self.layout is None:
                if plan.chunk_size != self._cache.chunk_size:
                    raise SwarmUnavailable(
                        f"root {root} uses {plan.chunk_size}-byte chunks, "
                        f"we use {self._cache.chunk_size}"
                    )
                self._begin(plan.size)
                if self.stream_mode:
                    raise SwarmUnavailable("the layer does not fit this node's cache")
                self.progress.mode = "swarm"
                if self.layout is not None and self.layout.count == 0:
                    complete.set()
            hashes.update(plan.chunk_sha256)
            started = 0
            for index, source in plan.assignments:
                if self._holds(index):
                    reports_done.append((index, source))  # nothing to fetch: free its slot
                    continue
                if source in fetching.get(index, {}):
                    continue
                scope = trio.CancelScope()
                fetching.setdefault(index, {})[source] = scope
                layer_nursery.start_soon(fetch, index, source, scope)
                started += 1
            log.debug(
                "layer %s: plan from %s (poll=%s want=%d done=%d failed=%d): %d assignments",
                digest,
                root,
                poll,
                request.want,
                len(done),
                len(failed),
                started,
            )
            return started

        async def standing_request() -> None:
            nonlocal slot_freed
            while not complete.is_set():
                if in_flight() >= swarm.parallel:
                    slot_freed = trio.Event()
                    await slot_freed.wait()
                    continue
                started = await ask(True)
                if not started and not complete.is_set():
                    await trio.sleep(0.05)  # the root answered empty-handed (or is gone)

        async def until_complete() -> None:
            await complete.wait()
            planners.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as planners:
                planners.start_soon(standing_request)
                planners.start_soon(until_complete)
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        # The last reports free the sources' upload slots at the root: send them now rather
        # than let them time out there.
        for _attempt in range(3):
            if not (reports_done or reports_failed):
                break
            try:
                await ask(False)
            except (SwarmUnavailable, RegistryError) as exc:
                log.info("layer %s: last reports not delivered: %s", digest, exc)
                break
        assert self.layout is not None
        if hasher.hexdigest() != self.digest.hex:
            self._observer.rejected("layer")
            raise LayerCorrupt(
                f"layer {self.digest}: chunks from the swarm hash to "
                f"{self.digest.algorithm}:{hasher.hexdigest()}"
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
        if response.status == 206:
            content_range = response.header("content-range") or ""
            if not content_range.startswith(f"bytes {offset}-"):
                raise LayerFailed(f"resume of {self.digest} got Content-Range {content_range!r}")
            return 0
        if response.status == 200:
            return offset
        raise LayerFailed(f"resume of {self.digest} answered {response.status}")

    def _holds(self, index: int) -> bool:
        return self.entry is not None and (index in self._hot or self.entry.has_chunk(index))

    async def _emit(self, index: int, data: Chunk, sha256: str | None = None) -> None:
        if self.stream_mode:
            alive = []
            for send in self._subscribers:
                try:
                    await send.send(data)
                    alive.append(send)
                except trio.BrokenResourceError:
                    pass
            self._subscribers = alive
            if not alive:
                raise LayerFailed("every reader of a streamed layer went away")
            return
        assert self.entry is not None and self._nursery is not None
        # The chunk is readable from memory at once; its write overlaps the next receive.
        await self._write_slots.acquire()
        self._hot[index] = data
        self._unwritten.add(index)
        self._nursery.start_soon(self._write_chunk, index, data, sha256)
        self._notify()

    async def _write_chunk(self, index: int, data: Chunk, sha256: str | None) -> None:
        assert self.entry is not None
        if sha256 is None and self._cache.chunk_tables:  # the table peers verify against
            hashing = time.perf_counter()
            sha256 = hashlib.sha256(data).hexdigest()
            self.times.add_time("verify", time.perf_counter() - hashing)
        writing = time.perf_counter()
        try:
            await self._cache.write_chunk(self.entry, index, data, sha256)
        except OSError as exc:
            self._cache.write_failed(exc)
            raise CacheWriteFailed(f"cache write of chunk {index} failed: {exc}") from exc
        finally:
            self._write_slots.release()
            self.times.add_time("disk", time.perf_counter() - writing)
        self._unwritten.discard(index)
        self._evict_hot()
        self._notify()

    def _evict_hot(self) -> None:
        """Keep only the newest chunks in memory, never one not on disk or not hashed yet."""
        done = [i for i in self._hot if i not in self._unwritten and i < self._hashed_upto]
        for old in sorted(done)[: max(0, len(done) - HOT_CHUNKS)]:
            del self._hot[old]

    def hot_chunk(self, index: int) -> Chunk | None:
        return self._hot.get(index)

    async def _finish(self) -> None:
        if self.stream_mode:
            for send in self._subscribers:
                try:
                    await send.send(None)  # end marker: the layer matched its digest
                except trio.BrokenResourceError:
                    pass
        else:
            assert self.entry is not None
            self._cache.commit(self.entry)
        self.verified = True
        via = "the swarm" if self.progress.mode == "swarm" else self.upstream.key
        elapsed = trio.current_time() - self.progress.started_at
        log.info(
            "layer %s: %d bytes from %s in %.2fs (%s)",
            self.digest,
            self.progress.received,
            via,
            elapsed,
            "streamed" if self.stream_mode else "cached",
        )
        self.progress.mode = "done"
        self._notify()


def first_failure(group: BaseExceptionGroup) -> BaseException:
    """The exception that made a layer's nursery fail (not the cancellations it caused).

    A layer has one outcome; readers need its kind (corrupt, cache write, upstream), not a
    group. A group of nothing but cancellations is returned as it is, to propagate.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if leaves else group


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
    """A verified layer in the cache; every chunk is checked on its way out."""

    def __init__(self, cache: ChunkCache, entry: CacheEntry) -> None:
        self.cache = cache
        self.entry = entry
        self.size = entry.size
        self._closed = False
        self._times = LayerTimes()

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        layout = self.entry.layout
        for index in layout.covering(start, end):
            reading = time.perf_counter()
            data = await self.cache.read_chunk(self.entry, index)
            self._times.add_time("disk", time.perf_counter() - reading)
            piece = _slice(data, layout.offset(index), start, end)
            self._times.add_bytes("cache", len(piece))
            yield piece

    def account(self, times: LayerTimes) -> None:
        times.merge(self._times)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
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
        for index in indexes:
            await self.download.wait_chunk(index)
            if index == indexes[-1]:
                await self.download.wait_verified()
            data = self.download.hot_chunk(index)
            if data is None:
                reading = time.perf_counter()
                data = await self.cache.read_chunk(entry, index)
                self._disk_seconds += time.perf_counter() - reading
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
        raise LayerFailed(f"layer {self.download.digest} failed: {self.download.error}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.download.progress.readers -= 1
        if self._channel is not None:
            self._channel.close()
        if self._entry is not None:
            self.cache.unpin(self._entry)

    def account(self, times: LayerTimes) -> None:
        times.merge(self.download.times)  # the download this reader shared: slot, transfer...
        times.add_time("disk", self._disk_seconds)


def _slice(data: bytes | Chunk, data_offset: int, start: int, end: int) -> memoryview:
    """The part of `data` (which starts at `data_offset` in the layer) inside [start, end)."""
    lo = max(start - data_offset, 0)
    hi = min(end - data_offset, len(data))
    return memoryview(data)[lo:hi]


async def _discard(response: ClientResponse, count: int) -> None:
    """Skip `count` body bytes (a resume answered 200 instead of 206)."""
    scratch = memoryview(bytearray(min(count, 1 << 20)))
    while count:
        n = await response.receive_into(scratch[: min(count, len(scratch))])
        if n == 0:
            raise HttpClientError("body ended while skipping")
        count -= n


class LayerFetcher:
    """Single-flight layer downloads under a concurrency limit."""

    def __init__(
        self,
        cache: ChunkCache,
        registry: RegistryClient,
        *,
        concurrency_limit: int,
        retries: int,
        swarm: SwarmContext | None = None,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self._swarm = swarm
        self._observer = observer
        self._cache = cache
        self._registry = registry
        self._limiter = trio.CapacityLimiter(concurrency_limit)
        self._retries = retries
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

    def in_flight(self) -> list[DownloadProgress]:
        return [d.progress for d in self._inflight.values()]

    async def open(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: Headers
    ) -> BlobSource:
        """A reader for the layer: from the cache, joining a download, or starting one."""

        async def reopen(cacheable: bool) -> BlobSource:
            return await self._open(upstream, repo, digest, headers, cacheable=cacheable)

        return ResumingBlob(await self._open(upstream, repo, digest, headers), reopen)

    async def _open(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        headers: Headers,
        *,
        cacheable: bool = True,
    ) -> BlobSource:
        key = str(digest)
        entry = self._cache.get(key) if cacheable else None
        if entry is not None:
            self._cache.pin(entry)
            return CachedBlob(self._cache, entry)
        download = self._join_or_start(
            upstream, repo, digest, headers, cacheable=cacheable, swarm=self._swarm
        )
        channel = download.subscribe()
        try:
            await download.started.wait()
            if download.layout is None:
                assert download.error is not None
                if isinstance(download.error, RegistryError):
                    raise download.error
                raise UpstreamUnavailable(f"layer {digest}: {download.error}")
            return DownloadReader(download, self._cache, channel)
        except BaseException:
            if channel is not None:
                channel.close()
            raise

    def _join_or_start(
        self,
        upstream: Upstream,
        repo: str,
        digest: Digest,
        headers: Headers,
        *,
        cacheable: bool,
        swarm: SwarmContext | None,
    ) -> LayerDownload:
        """The layer's download in flight (single flight), or a new one started in our nursery.
        A download past the cache (`cacheable=False`) is never shared."""
        key = str(digest)
        download = self._inflight.get(key) if cacheable else None
        if download is not None and download.joinable:
            return download
        download = LayerDownload(
            digest=digest,
            upstream=upstream,
            repo=repo,
            headers=headers,
            cache=self._cache,
            registry=self._registry,
            retries=self._retries,
            cacheable=cacheable,
            swarm=swarm,
            observer=self._observer,
        )
        if cacheable:
            self._inflight[key] = download
        assert self._nursery is not None, "LayerFetcher.run is not running"
        self._nursery.start_soon(self._run_download, download)
        return download

    async def ensure(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: Headers
    ) -> LayerDownload | CacheEntry:
        """The layer in this node's cache, or its download from the origin once its size is
        known (the root's tracker: the owner never asks the swarm for its own layers)."""
        key = str(digest)
        entry = self._cache.get(key)
        if entry is not None:
            return entry
        download = self._join_or_start(upstream, repo, digest, headers, cacheable=True, swarm=None)
        await download.started.wait()
        if download.layout is None or download.error is not None:
            err = download.error
            if isinstance(err, RegistryError):
                raise err
            raise UpstreamUnavailable(f"layer {digest}: {err}")
        if download.stream_mode:
            raise RegistryError(502, "UNAVAILABLE", f"layer {digest} does not fit the cache")
        return download

    async def _run_download(self, download: LayerDownload) -> None:
        key = str(download.digest)
        try:
            await download.run(self._limiter)
        finally:
            if self._inflight.get(key) is download:
                del self._inflight[key]
