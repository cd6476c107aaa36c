"""The root's tracker: for each layer it owns, the one place that knows who holds what.

A plan request from an agent (`agent.swarm.protocol.PlanTarget`) makes the root start — or join —
its own download of the layer from the origin (the only one in the cluster), feeds the
agent's reports into the layer's `agent.swarm.schedule.LayerSchedule`, and answers with the
transfers the schedule assigned to that agent. Assignments the schedule makes for an agent between
its requests wait in that agent's mailbox; an agent with nothing to do is held up to
`LONG_POLL` seconds so new work reaches it at once.

State per layer has a single owner: this object, on the trio thread. One task per layer
watches the root's own download and tells the schedule how far it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import trio

from agent.cache.store import CacheEntry, ChunkCache
from agent.core.config import Config
from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.registry.routes import Digest, parse_digest
from agent.registry.upstreams import match_upstream
from agent.swarm.plan import Plan
from agent.swarm.protocol import PlanTarget
from agent.swarm.schedule import Actions, LayerSchedule

log = logging.getLogger(__name__)

LONG_POLL = 2.0
FORGET_AFTER = 600.0  # a layer nobody asked about this long is forgotten
EXPIRE_EVERY = 0.5
GONE_AFTER = 3 * LONG_POLL  # an agent pulling a layer asks at least every LONG_POLL seconds


class OriginDownload(Protocol):
    """The root's own download of a layer from the origin, as the tracker watches it
    (`agent.fetch.download.LayerDownload`)."""

    entry: CacheEntry | None
    error: BaseException | None
    verified: bool
    finished: trio.Event

    async def wait_change(self) -> None:
        """Return at the next chunk stored, verification, or failure."""


class OriginFetcher(Protocol):
    """Where the tracker gets its layers (`agent.fetch.fetcher.LayerFetcher`); passed in by
    the daemon, so the swarm package does not depend on the fetch package that uses it."""

    async def ensure(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: list[tuple[bytes, bytes]]
    ) -> OriginDownload | CacheEntry:
        """The layer in the cache, or its download from the origin once its size is known."""


@dataclass(eq=False, kw_only=True)
class RootLayer:
    digest: str
    download: OriginDownload | None
    entry: CacheEntry | None
    schedule: LayerSchedule | None = None
    mailbox: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    origin_held: int = 0  # leading chunks the root holds on disk
    seen: dict[str, float] = field(default_factory=dict)  # node -> its last plan request
    changed: trio.Event = field(default_factory=trio.Event)
    last_asked: float = 0.0

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass(eq=False, kw_only=True)
class Tracker:
    """The layers this root owns: one schedule, mailboxes and origin watch per layer."""

    node: str
    config: Config
    fetcher: OriginFetcher
    cache: ChunkCache
    window: int = 8  # the schedule's look-ahead, in chunks
    upload_slots: int = 1  # transfers a peer (and the root) uploads at once
    transfer_timeout: float = 10.0
    plans_answered: int = field(default=0, init=False)
    _layers: dict[str, RootLayer] = field(default_factory=dict, init=False)
    _nursery: trio.Nursery | None = field(default=None, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(EXPIRE_EVERY)
                self._expire_and_forget()

    def statistics(self) -> dict[str, object]:
        return {
            "layers": {
                digest: layer.schedule.progress() if layer.schedule else {"state": "starting"}
                for digest, layer in self._layers.items()
            },
            "plans_answered": self.plans_answered,
        }

    def _deliverable(self, layer: RootLayer, node: str) -> list[tuple[int, str]]:
        entry = layer.entry
        if entry is None:
            return []
        cache = self.cache
        return [
            (c, src)
            for c, src in layer.mailbox.get(node, [])
            if cache.chunk_sha256(entry, c) is not None
        ]

    def _expire_and_forget(self) -> None:
        now = trio.current_time()
        for digest, layer in list(self._layers.items()):
            if layer.schedule is not None:
                self._deliver(layer, layer.schedule.expire(now))
                # A node still downloading asks at least every LONG_POLL seconds; one that
                # stopped asking is gone, and the sources it was receiving from are freed.
                receivers = {a.node for a in layer.schedule.in_flight()}
                for node in receivers:
                    if now - layer.seen.get(node, now) > GONE_AFTER:
                        log.warning("tracker %s: %s stopped asking; forgetting it", digest, node)
                        layer.seen.pop(node, None)
                        self._deliver(layer, layer.schedule.leave(node, now))
            if now - layer.last_asked > FORGET_AFTER:
                del self._layers[digest]

    def _deliver(self, layer: RootLayer, actions: Actions) -> None:
        if not actions:
            return
        for a in actions.assigned:
            layer.mailbox.setdefault(a.node, []).append((a.chunk, a.source))
        for a in actions.cancelled:
            box = layer.mailbox.get(a.node)
            if box and (a.chunk, a.source) in box:
                box.remove((a.chunk, a.source))
        layer.notify()

    async def plan(self, asker: str, request: PlanTarget, authorization: bytes | None) -> Plan:
        chunk_size = self.cache.chunk_size
        upstream = match_upstream(request.upstream, self.config.upstreams)
        if upstream is None:
            return Plan(
                size=None,
                chunk_size=chunk_size,
                error=f"registry {request.upstream} is not in this root's upstreams",
                error_status=403,
            )
        layer = self._layers.get(request.digest)
        if layer is None or (layer.download is not None and layer.download.error is not None):
            headers = [(b"authorization", authorization)] if authorization else []
            try:
                layer = await self._start_layer(request, upstream, headers)
            except RegistryError as err:
                return Plan(
                    size=None, chunk_size=chunk_size, error=err.message, error_status=err.status
                )
        layer.last_asked = trio.current_time()
        layer.seen[asker] = layer.last_asked
        if layer.schedule is None:
            return Plan(size=None, chunk_size=chunk_size, retry_after=0.2)
        schedule = layer.schedule
        now = trio.current_time()
        if request.fresh:  # a new download there: what we knew of the node is from before
            layer.mailbox.pop(asker, None)
            self._deliver(layer, schedule.leave(asker, now))
        for chunk, source in request.done:
            self._deliver(layer, schedule.completed(asker, chunk, source, now))
        for chunk, source, bad in request.failed:
            if bad:
                log.warning(
                    "tracker %s: %s says %s served a bad chunk %d",
                    request.digest,
                    asker,
                    source,
                    chunk,
                )
            self._deliver(layer, schedule.failed(asker, chunk, source, bad_data=bad, now=now))
            if not bad and source != self.node and now - layer.seen.get(source, 0.0) > GONE_AFTER:
                # A source that fails transfers and has not asked us anything lately is gone
                # (killed, partitioned): forget its chunks so nobody else waits on it. It
                # comes back with its holdings if it asks again.
                log.warning(
                    "tracker %s: %s looks gone; forgetting its chunks", request.digest, source
                )
                layer.seen.pop(source, None)
                self._deliver(layer, schedule.leave(source, now))
        for chunk, source in request.missing:  # evicted there: no fault, just not a holder
            self._deliver(layer, schedule.missing(asker, chunk, source, now))
        asked = schedule.request(
            asker, have=request.have, want=request.want, now=now, past=request.past
        )
        self._deliver(layer, asked)
        # The agent's standing request waits here until work appears for it; its reports
        # come in separate requests that are answered at once.
        if request.poll and request.want and not self._deliverable(layer, asker):
            with trio.move_on_after(LONG_POLL):
                while not self._deliverable(layer, asker):
                    await layer.changed.wait()
        self.plans_answered += 1
        # Only chunks this root holds itself come with a sha256 it can vouch for; a transfer
        # between peers of a chunk the root has not fetched yet (after a root failover) waits
        # in the mailbox until it has.
        assignments = self._deliverable(layer, asker)
        box = layer.mailbox.get(asker, [])
        layer.mailbox[asker] = [a for a in box if a not in assignments]
        entry = layer.entry
        hashes: dict[int, str] = {}
        if entry is not None:
            for c, _ in assignments:
                sha = self.cache.chunk_sha256(entry, c)
                assert sha is not None  # only such chunks are deliverable
                hashes[c] = sha
        return Plan(
            size=schedule_size(layer),
            chunk_size=chunk_size,
            chunk_sha256=hashes,
            assignments=tuple(assignments),
            complete=bool(layer.download is None or layer.download.verified),
            retry_after=0.0 if assignments else 0.5,
        )

    async def _start_layer(
        self, request: PlanTarget, upstream: Upstream, headers: list[tuple[bytes, bytes]]
    ) -> RootLayer:
        digest = parse_digest(request.digest)
        target = await self.fetcher.ensure(
            upstream=upstream, repo=request.repo, digest=digest, headers=headers
        )
        if isinstance(target, CacheEntry):
            await self.cache.fill_chunk_table(target)
            layer = RootLayer(digest=request.digest, download=None, entry=target)
        else:
            layer = RootLayer(digest=request.digest, download=target, entry=target.entry)
        self._layers[request.digest] = layer
        count = layer.entry.layout.count if layer.entry is not None else None
        if count is None:
            raise RegistryError(
                502, "UNAVAILABLE", f"layer {digest} does not fit this root's cache"
            )
        layer.schedule = LayerSchedule(
            chunk_count=count,
            root=self.node,
            window=self.window,
            upload_slots=self.upload_slots,
            root_upload_slots=self.upload_slots,
            transfer_timeout=self.transfer_timeout,
        )
        self._sync_origin(layer)
        if layer.download is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_origin, layer)
        return layer

    def _sync_origin(self, layer: RootLayer) -> None:
        """Tell the schedule how many leading chunks the root holds on disk (servable)."""
        entry, schedule = layer.entry, layer.schedule
        if entry is None or schedule is None:
            return
        held = layer.origin_held
        count = entry.layout.count
        while held < count and entry.has_chunk(held):
            held += 1
        if held > layer.origin_held:
            layer.origin_held = held
            self._deliver(layer, schedule.origin_progress(held, trio.current_time()))

    async def _watch_origin(self, layer: RootLayer) -> None:
        download = layer.download
        assert download is not None
        while not download.finished.is_set():
            await download.wait_change()
            self._sync_origin(layer)
        self._sync_origin(layer)
        if download.error is not None:
            log.warning("tracker %s: the root's download failed: %s", layer.digest, download.error)
            layer.notify()


def schedule_size(layer: RootLayer) -> int | None:
    return layer.entry.size if layer.entry is not None else None
