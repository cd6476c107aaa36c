"""The root's tracker: for each layer it owns, the one place that knows who holds what.

A plan request from an agent (`agent.swarm.protocol.PlanTarget`) makes the root start — or join —
its own download of the layer from the origin (the only one in the cluster), feeds the
agent's reports into the layer's `agent.swarm.schedule.LayerSchedule`, and answers with the
transfers the schedule assigned to that agent. Assignments the schedule makes for an agent between
its requests wait in that agent's mailbox; an agent with nothing to do is held up to
`LONG_POLL` seconds so new work reaches it at once.

State per layer has a single owner: this object, on the trio thread. One task per layer
watches the root's own download and tells the schedule which chunks the root holds.

A layer bigger than the root's cache passes through a ring of chunk slots
(`agent.fetch.window`): the root's download keeps a chunk in its slot while the schedule says
the swarm needs the root's copy (`LayerSchedule.root_keeps`), so the origin still sends each
byte about once. A chunk the swarm lost anyway (every holder let it go, and a node still waits
for it) is fetched again from the origin with a `Range` request, counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from agent.cache.store import CacheEntry, ChunkCache
from agent.core.config import Config
from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.registry.routes import Digest, parse_digest
from agent.registry.upstreams import match_upstream
from agent.swarm.handoffstore import HandoffStore
from agent.swarm.intake import take_request
from agent.swarm.liveness import Liveness
from agent.swarm.ownership import Fetching, Handoffs, busy_with, may_hand_off
from agent.swarm.pace import expected_transfer
from agent.swarm.plan import Plan, table_digest
from agent.swarm.protocol import ROOT_WINDOW, PlanTarget
from agent.swarm.roots import RootSet
from agent.swarm.schedule import Actions, LayerSchedule

log = logging.getLogger(__name__)

LONG_POLL = 2.0
START_WAIT = 5.0  # s a plan request waits for its layer's start (an agent waits 10 for us)
FORGET_AFTER = 600.0  # a layer nobody asked about this long is forgotten
EXPIRE_EVERY = 0.5
REFETCHES = 2  # Range requests for lost chunks in flight per layer
REFETCH_TIMEOUT = 60.0  # s for one, its wait for a slot included
GONE_AFTER = 3 * LONG_POLL  # an agent pulling a layer asks at least every LONG_POLL seconds
MAX_NODES_PER_LAYER = 16384  # nodes one root answers about one layer (tiers go beyond)


class OriginDownload(Protocol):
    """The root's own download of a layer from the origin, as the tracker watches it
    (`agent.fetch.download.LayerDownload`)."""

    entry: CacheEntry | None
    error: BaseException | None
    verified: bool
    finished: trio.Event
    keep: Callable[[int], bool]  # a ring keeps these chunks in their slots

    async def wait_change(self) -> None:
        """Return at the next chunk stored, verification, or failure."""

    def recheck(self) -> None:
        """What `keep` says may have changed."""


class OriginFetcher(Protocol):
    """Where the tracker gets its layers (`agent.fetch.fetcher.LayerFetcher`); passed in by
    the daemon, so the swarm package does not depend on the fetch package that uses it."""

    async def ensure(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: list[tuple[bytes, bytes]]
    ) -> OriginDownload | CacheEntry:
        """The layer in the cache, or its download from the origin once its size is known."""

    async def refetch(self, download: OriginDownload, index: int) -> int:
        """Fetch a chunk of a ring layer again from the origin; the bytes the origin sent."""

    def holds(self, digest: str) -> bool:
        """The layer is in this node's cache or on its way (a download of any reader's)."""


@dataclass(eq=False, kw_only=True)
class RootLayer:
    digest: str
    download: OriginDownload | None
    entry: CacheEntry | None
    schedule: LayerSchedule | None = None
    mailbox: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    origin_held: int = 0  # leading chunks the root holds on disk (a ring: that came)
    ring_held: set[int] = field(default_factory=set)  # a ring's chunks, as last told
    ring_arrived: set[int] = field(default_factory=set)  # came, past the leading run
    refetching: set[int] = field(default_factory=set)
    refetched: int = 0  # lost chunks fetched again from the origin
    sealed: str | None = None  # the verified layer's chunk-table digest (Plan.table_sha256)
    seen: dict[str, float] = field(default_factory=dict)  # node -> its last plan request
    standing: dict[str, trio.CancelScope] = field(default_factory=dict)  # held long polls
    waiters: dict[str, trio.Event] = field(default_factory=dict)  # what wakes each of them
    last_asked: float = 0.0

    def notify(self, nodes: Iterable[str] | None = None) -> None:
        """Wake the held standing requests of `nodes` (None: of every node with mail waiting).
        Only those: with a thousand agents waiting, waking all of them for every assignment
        made the root's work per event grow with the cluster."""
        if nodes is None:
            nodes = [node for node in self.waiters if self.mailbox.get(node)]
        for node in nodes:
            woken = self.waiters.pop(node, None)
            if woken is not None:
                woken.set()


@dataclass(eq=False, kw_only=True)
class Tracker:
    """The layers this root owns: one schedule, mailboxes and origin watch per layer."""

    node: str
    config: Config
    fetcher: OriginFetcher
    cache: ChunkCache
    window: int = ROOT_WINDOW  # the schedule's look-ahead, in chunks
    upload_slots: int = 1  # transfers a peer uploads at once
    # The root's uploads at once. Its link is the one every byte crosses once, and a single
    # transfer rarely has a receiver's link to itself (its pipelined next transfer, a relayed
    # chunk): with 2, the netns bench's roots sent at ~110 -> more of their 200 Mbit/s, and P95
    # went 1.45-1.50 -> 1.39-1.40 x T_min (N=8, 2 layers), 1.62 -> 1.49 (N=16), 1.68 -> 1.56
    # (N=8, 1 layer); 3 gave 1.43. Each first copy takes twice as long, which costs the
    # simulator's fluid links a little (1.22 -> 1.24 for one layer) and no real link we measured.
    root_upload_slots: int = 2
    transfer_timeout: float = 10.0
    # The roots as this root sees them: a busy root hands a new layer to the next in its
    # order (`agent.swarm.ownership`); None: it keeps every layer it is asked about.
    roots: RootSet | None = None
    handoff_store: HandoffStore | None = None  # the handoffs on disk, across restarts
    liveness: Liveness = field(default_factory=Liveness)  # is a failing source's port still open
    plans_answered: int = field(default=0, init=False)
    handoffs: Handoffs = field(default_factory=Handoffs, init=False)
    _layers: dict[str, RootLayer] = field(default_factory=dict, init=False)
    _starting: dict[str, trio.Event] = field(default_factory=dict, init=False)
    _nursery: trio.Nursery | None = field(default=None, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.handoff_store is not None:
            await self.handoff_store.load(self.handoffs)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(EXPIRE_EVERY)
                self._expire_and_forget()

    def statistics(self) -> dict[str, object]:
        return {
            "layers": {
                digest: {**layer.schedule.progress(), "refetched": layer.refetched}
                if layer.schedule
                else {"state": "starting"}
                for digest, layer in self._layers.items()
            },
            "plans_answered": self.plans_answered,
            "handoffs": self.handoffs.state(),
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
                        self._forget(layer, node, now)
            if now - layer.last_asked > FORGET_AFTER:
                del self._layers[digest]

    def _deliver(self, layer: RootLayer, actions: Actions) -> None:
        if not actions:
            return
        schedule = layer.schedule
        assert schedule is not None
        # One event may cancel a transfer and assign the same one again (expire): what is in
        # flight after the event decides, not the order of the lists.
        for a in actions.cancelled:
            box = layer.mailbox.get(a.node)
            if box and (a.chunk, a.source) in box:
                box.remove((a.chunk, a.source))
        for a in actions.assigned:
            box = layer.mailbox.setdefault(a.node, [])
            if (a.chunk, a.source) not in box and schedule.flying(a.node, a.chunk, a.source):
                box.append((a.chunk, a.source))
        layer.notify({a.node for a in actions.assigned})

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
        # Every asker is answered within START_WAIT of its arrival, "no size yet" if need be:
        # one that came during another's start waited for that start and then its own, 2 x
        # START_WAIT, as long as its plan timeout, and left the swarm for the registry.
        deadline = trio.current_time() + START_WAIT
        while (starting := self._starting.get(request.digest)) is not None:
            with trio.move_on_at(deadline) as waiting:
                await starting.wait()  # one start per layer: its first asker's
            if waiting.cancelled_caught:
                return Plan(size=None, chunk_size=chunk_size, retry_after=0.5)
        if not request.handed and (to := self.handed_to(request.digest)) is not None:
            return Plan(size=None, chunk_size=chunk_size, handoff=to)
        layer = self._layers.get(request.digest)
        if (
            layer is None
            or (layer.download is not None and layer.download.error is not None)
            or (layer.entry is not None and layer.entry.dropped)  # evicted meanwhile
        ):
            started = await self._start(request, upstream, authorization, deadline)
            if isinstance(started, Plan):
                return started
            layer = started
        if (full := self._full(layer, asker, request.digest, chunk_size)) is not None:
            return full
        layer.last_asked = trio.current_time()
        layer.seen[asker] = layer.last_asked
        if layer.schedule is None:
            return Plan(size=None, chunk_size=chunk_size, retry_after=0.2)
        self._take_request(layer, asker, request, trio.current_time())
        # The agent's standing request waits here until work appears for it; its reports
        # come in separate requests that are answered at once.
        if request.poll:
            # A newer standing request of the node's (after a restart, or a poll it gave up
            # on) takes the work: the older one may be talking to a process that is gone.
            older = layer.standing.pop(asker, None)
            if older is not None:
                older.cancel()
        if request.poll and request.want and not self._deliverable(layer, asker):
            layer.standing[asker] = standing = trio.move_on_after(LONG_POLL)
            with standing:
                while not self._deliverable(layer, asker):
                    layer.waiters[asker] = woken = trio.Event()
                    try:
                        await woken.wait()
                    finally:
                        if layer.waiters.get(asker) is woken:
                            del layer.waiters[asker]
            if layer.standing.get(asker) is not standing:
                return Plan(size=schedule_size(layer), chunk_size=chunk_size, retry_after=0.0)
            del layer.standing[asker]
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
        complete = bool(layer.download is None or layer.download.verified)
        return Plan(
            size=schedule_size(layer),
            chunk_size=chunk_size,
            chunk_sha256=hashes,
            assignments=tuple(assignments),
            complete=complete,
            table_sha256=self._seal(layer) if complete else None,
            retry_after=0.0 if assignments else 0.5,
        )

    async def _start(
        self,
        request: PlanTarget,
        upstream: Upstream,
        authorization: bytes | None,
        deadline: float,
    ) -> RootLayer | Plan:
        """Start a layer new to this root (one start per layer: later askers wait for it), or
        hand it off; a Plan when there is no layer to answer from (yet)."""
        chunk_size = self.cache.chunk_size
        headers = [(b"authorization", authorization)] if authorization else []
        self._starting[request.digest] = started = trio.Event()
        fresh: RootLayer | None = None
        to: str | None = None
        try:
            # Answered before the agent gives up on us (its plan timeout): the origin, or a
            # parent tier, may be slow to tell the size; the download goes on meanwhile.
            with trio.move_on_at(deadline):
                if not request.handed:
                    to = await self._hand_off(request.digest)
                if to is None:
                    fresh = await self._start_layer(request, upstream, headers)
        except RegistryError as err:
            return Plan(
                size=None, chunk_size=chunk_size, error=err.message, error_status=err.status
            )
        finally:
            del self._starting[request.digest]
            started.set()
        if to is not None:
            return Plan(size=None, chunk_size=chunk_size, handoff=to)
        return (
            fresh if fresh is not None else Plan(size=None, chunk_size=chunk_size, retry_after=0.5)
        )

    def handed_to(self, digest: str) -> str | None:
        """The root this root handed `digest` to, if it did: its own client goes there too."""
        return self.handoffs.target(digest, trio.current_time())

    async def _hand_off(self, digest: str) -> str | None:
        """Whether to hand a layer new to this root to the next root, and to which one
        (`agent.swarm.ownership.Handoffs.decide`): recorded, so every asker hears the same."""
        order = self.roots.owners(digest) if self.roots is not None else []
        if not may_hand_off(self.node, order, held=self.fetcher.holds(digest)):
            return None  # (before waiting on other starts)
        # Layers whose starts began before this one's are weighed with their sizes: two big
        # layers asked for at once are the case this is for.
        for other, event in list(self._starting.items()):
            if other == digest:
                break
            await event.wait()
        fetching = [
            Fetching(d, layer.entry.layout.count if layer.entry is not None else None)
            for d, layer in self._layers.items()
            if layer.download is not None and not layer.download.finished.is_set()
        ]
        to = self.handoffs.decide(
            digest,
            me=self.node,
            order=order,
            held=self.fetcher.holds(digest),
            fetching=fetching,
            now=trio.current_time(),
        )
        if to is not None:
            busy = busy_with(fetching, digest)
            log.info("tracker %s: busy fetching %s; handing it to %s", digest, busy, to)
            if self.handoff_store is not None and self._nursery is not None:
                self._nursery.start_soon(self.handoff_store.save, self.handoffs)
        return to

    @staticmethod
    def _full(layer: RootLayer, asker: str, digest: str, chunk_size: int) -> Plan | None:
        """The refusal for a node new to a layer that MAX_NODES_PER_LAYER nodes asked about
        already: a token holder can name any number of nodes, each costing the root memory; a
        real cluster this big has roots in tiers (each answers its group)."""
        if asker in layer.seen or len(layer.seen) < MAX_NODES_PER_LAYER:
            return None
        log.warning("tracker %s: %d nodes already; refusing %s", digest, len(layer.seen), asker)
        return Plan(
            size=None,
            chunk_size=chunk_size,
            error=f"this root serves {MAX_NODES_PER_LAYER} nodes for this layer already",
            error_status=503,
        )

    def _seal(self, layer: RootLayer) -> str | None:
        """The digest of the chunk table of a layer this root verified whole (the seal agents
        may trust instead of hashing the layer again), once every chunk's sha256 is known."""
        if layer.sealed is None and layer.entry is not None:
            table = [
                self.cache.chunk_sha256(layer.entry, c) for c in range(layer.entry.layout.count)
            ]
            if all(table):
                layer.sealed = table_digest(table)  # type: ignore[arg-type]
        return layer.sealed

    def _take_request(self, layer: RootLayer, asker: str, request: PlanTarget, now: float) -> None:
        """Feed the agent's reports and then its demand to the layer's schedule
        (agent/swarm/intake.py), and deliver what the schedule decided."""
        schedule = layer.schedule
        assert schedule is not None
        if request.fresh:  # a new download there: what it was given before is void
            layer.mailbox.pop(asker, None)
        for fed in take_request(schedule, asker, request, now):
            self._deliver(layer, fed.actions)
            if fed.failed is None:
                continue
            chunk, source, bad = fed.failed
            if bad:
                log.warning(
                    "tracker %s: %s says %s served a bad chunk %d",
                    request.digest,
                    asker,
                    source,
                    chunk,
                )
            if bad or source == self.node:
                continue
            if now - layer.seen.get(source, 0.0) > GONE_AFTER:
                # A source that fails transfers and has not asked us anything lately is gone
                # (killed, partitioned): forget its chunks so nobody else waits on it. It
                # comes back with its holdings if it asks again.
                log.warning(
                    "tracker %s: %s looks gone; forgetting its chunks", request.digest, source
                )
                self._forget(layer, source, now)
            elif self._nursery is not None and self.liveness.due(source, now):
                self._nursery.start_soon(self._forget_if_gone, source)  # (it may have died)
        if layer.download is not None:
            layer.download.recheck()  # reports, `have` and `past` change what a ring must keep

    async def _forget_if_gone(self, node: str) -> None:
        """Forget `node` in every layer at once if nothing listens at its port any more
        (agent/swarm/liveness.py), not GONE_AFTER after its last request."""
        if not await self.liveness.gone(node):
            return
        now = trio.current_time()
        for digest, layer in self._layers.items():
            if layer.schedule is not None and node in layer.seen:
                log.warning("tracker %s: %s refuses connections; forgetting it", digest, node)
                self._forget(layer, node, now)

    def _forget(self, layer: RootLayer, node: str, now: float) -> None:
        """`node` is gone from `layer`: its holdings and transfers leave the schedule; it comes
        back with its holdings if it asks again."""
        assert layer.schedule is not None
        layer.seen.pop(node, None)
        self._deliver(layer, layer.schedule.leave(node, now))

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
        if layer.entry is None:
            raise RegistryError(
                502, "UNAVAILABLE", f"layer {digest} does not fit this root's cache"
            )
        layer.schedule = LayerSchedule(
            chunk_count=layer.entry.layout.count,
            layout=layer.entry.layout,
            root=self.node,
            window=self.window,
            upload_slots=self.upload_slots,
            root_upload_slots=self.root_upload_slots,
            transfer_timeout=self.transfer_timeout,
            expected=expected_transfer(self.cache.chunk_size),
        )
        if layer.download is not None:
            layer.download.keep = layer.schedule.root_keeps
        self._sync_origin(layer)
        if layer.download is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_origin, layer)
        return layer

    def _sync_origin(self, layer: RootLayer) -> None:
        """Tell the schedule which chunks the root holds on disk (servable)."""
        entry, schedule = layer.entry, layer.schedule
        if entry is None or schedule is None:
            return
        now = trio.current_time()
        # The last chunk waits for the root's verification, so that agents, who may skip their
        # whole-layer pass under the seal, get the seal before it (`SwarmDownload`). From the
        # origin it waits anyway; through a parent tier's swarm it would not.
        download = layer.download
        held_back = download is not None and not download.verified
        told = entry.layout.count - 1 if held_back else entry.layout.count
        if entry.slots is not None:  # a ring: chunks come and go
            # The schedule takes the root's download to be in order (a chunk told stored means
            # the ones below came too); through a parent tier's swarm they come out of order,
            # so a chunk is told once every chunk below it has come (and maybe gone).
            held = set(entry.checksums)
            layer.ring_arrived |= {c for c in held if c >= layer.origin_held}
            while layer.origin_held in layer.ring_arrived and layer.origin_held < told:
                layer.ring_arrived.discard(layer.origin_held)
                layer.origin_held += 1
            held = {c for c in held if c < layer.origin_held}
            for c in sorted(held - layer.ring_held):
                self._deliver(layer, schedule.root_stored(c, now))
            for c in layer.ring_held - held:
                schedule.root_released(c, now)
            if held - layer.ring_held:
                layer.notify()  # mail that waited for the root's own copy
            layer.ring_held = held
            return
        held_upto = layer.origin_held
        while held_upto < told and entry.has_chunk(held_upto):
            held_upto += 1
        if held_upto > layer.origin_held:
            layer.origin_held = held_upto
            self._deliver(layer, schedule.origin_progress(held_upto, now))
            layer.notify()  # mail that waited for the root's own copy (after a failover)

    async def _watch_origin(self, layer: RootLayer) -> None:
        """Follow the root's download; a ring's watch lasts while the layer is tracked, since
        agents may still need chunks fetched again after the download finished."""
        download, entry = layer.download, layer.entry
        assert download is not None and entry is not None
        ring = entry.slots is not None
        while self._layers.get(layer.digest) is layer and not entry.dropped:
            if download.finished.is_set() and (download.error is not None or not ring):
                break
            with trio.move_on_after(EXPIRE_EVERY):
                await download.wait_change()
            self._sync_origin(layer)
            if ring and layer.schedule is not None and download.error is None:
                for c in layer.schedule.lost():
                    if len(layer.refetching) >= REFETCHES:
                        break
                    if c not in layer.refetching:
                        layer.refetching.add(c)
                        assert self._nursery is not None
                        self._nursery.start_soon(self._refetch, layer, c)
        self._sync_origin(layer)
        if download.error is not None:
            log.warning("tracker %s: the root's download failed: %s", layer.digest, download.error)
            layer.notify()

    async def _refetch(self, layer: RootLayer, chunk: int) -> None:
        """Fetch a chunk the swarm lost again from the origin (a `Range` request)."""
        assert layer.download is not None
        try:
            with trio.fail_after(REFETCH_TIMEOUT):
                size = await self.fetcher.refetch(layer.download, chunk)
            if not size:
                return  # it was on its way to the disk after all
            layer.refetched += 1
            log.warning(
                "tracker %s: the swarm lost chunk %d; fetched it again from the origin (%d bytes)",
                layer.digest,
                chunk,
                size,
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the next look tries again
            log.warning("tracker %s: refetch of chunk %d failed: %s", layer.digest, chunk, exc)
        finally:
            layer.refetching.discard(chunk)
        self._sync_origin(layer)
        layer.notify()


def schedule_size(layer: RootLayer) -> int | None:
    return layer.entry.size if layer.entry is not None else None
