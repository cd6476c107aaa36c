"""The facts of one layer's swarm, on the root: who holds which chunk, which transfers are in
flight, whose upload slots are free, who is banned. Pure, no I/O.

Theory of operation
-------------------
`agent.swarm.schedule.LayerSchedule` decides; the `Ledger` it owns records. The schedule's rules
read the same fact several ways -- a chunk's holders, a peer's free slot, a node's transfers
in flight, a source's uploads, the root's -- so each is kept in its own index, and every change
of fact goes through one method here that updates every index it touches: a transfer
(`assign`, `release`), a chunk held or lost (`add_holding`, `replace_holdings`), a ban, a
source a node avoids, a node gone (`remove`). The ledger chooses nothing and never refuses a
change: that the change is allowed (the source holds the chunk and has a free slot, the root
is not already sending that chunk) is the schedule's to check.

Each change also says who must be looked at again before the event returns, in the event's
`Batch`: `dirty` nodes, whose candidate chunks changed, and `freed` sources, which may serve
someone now. The schedule's matching loop (`LayerSchedule._settle`) drains both.

The ledger mutates its indexes in place and never rebinds them, so the schedule may bind them
once (`peers`, `holders`, `free`, `flights`, `root_sending`, `root_held`, `waiting`) and read
them in its inner loops without going through the ledger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

ROOT = 0  # the root's internal id; peers are numbered from 1
FlightKey = tuple[int, int, int]  # (node, chunk, source)
LEFT_FLIGHTS = 4096  # transfers whose source left, remembered as evidence for a bad-data report


@dataclass(frozen=True, kw_only=True, slots=True)
class Assignment:
    """`node` should fetch chunk `chunk` from `source`; issued at time `issued`."""

    node: str
    chunk: int
    source: str
    issued: float

    def __post_init__(self) -> None:
        if self.chunk < 0:
            raise ValueError(f"negative chunk index {self.chunk}")
        if self.node == self.source:
            raise ValueError(f"{self.node} cannot fetch from itself")


@dataclass(frozen=True, kw_only=True, slots=True)
class Actions:
    """What an event decided: new assignments (for any node) and cancelled ones."""

    assigned: tuple[Assignment, ...] = ()
    cancelled: tuple[Assignment, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.assigned or self.cancelled)


NOTHING = Actions()


class Peer:
    """What the tracker knows about one agent."""

    __slots__ = (
        "ident",
        "name",
        "held",
        "have",
        "first",
        "uploads",
        "demand",
        "incoming",
        "outgoing",
        "from_root",
        "avoid",
        "waiting_on",
        "uploaded",
        "downloaded",
        "root_copies",
        "banned",
        "pace",
        "past",
        "vouched",
        "failed",
        "lagging",
        "down_pace",
        "depth",
        "proven",
    )

    def __init__(self, ident: int, name: str, chunk_count: int) -> None:
        self.ident = ident
        self.name = name
        self.held = bytearray(chunk_count)
        self.have = 0  # chunks held
        self.first = 0  # first missing chunk (chunk_count when complete)
        self.uploads = 0  # transfers in flight from this node
        self.demand = 0  # transfers it asked for and was not given yet
        self.incoming: dict[int, list[int]] = {}  # chunk -> sources in flight
        self.outgoing: set[FlightKey] = set()  # flights with this node as the source
        self.from_root = 0  # transfers in flight from the root (0 or 1)
        self.avoid: set[int] = set()  # sources that failed this node (not with bad data)
        self.waiting_on: list[int] = []  # chunks it is listed under in the schedule's waiting
        self.uploaded = 0  # transfers served, as reported complete
        self.downloaded = 0
        self.root_copies = 0  # transfers the root was assigned to send it
        self.banned = False
        self.pace = -1.0  # moving average of its uploads' durations (-1: none yet)
        self.past = 0  # chunks below this it no longer wants (its readers are past them)
        # chunk -> source of a transfer that counted as done when it said `finishing`, its
        # last bytes still on the way: a `failed` report of it takes the holding back.
        self.vouched: dict[int, int] = {}
        # (chunk, source) of transfers to it reported `failed` before their `finishing` came:
        # the two reports travel in separate requests, and a late `finishing` is stale.
        self.failed: set[tuple[int, int]] = set()
        self.lagging = 0  # its downloads that lag (`Ledger.lag`): their sources moved on
        self.down_pace = -1.0  # moving average of its downloads' durations (-1: none yet)
        self.depth = 1  # transfers it keeps in flight each way (its request's `depth`)
        self.proven = False  # its uploads ran at the usual pace: it may serve `depth` at once

    def progress(self) -> dict[str, object]:
        """This node's counts, for status pages and tests."""
        return {
            "have": self.have,
            "first_missing": self.first,
            "past": self.past,
            "downloading": sum(len(s) for s in self.incoming.values()),
            "uploading": self.uploads,
            "downloaded": self.downloaded,
            "uploaded": self.uploaded,
            "from_root": self.root_copies,
            "demand": self.demand,
            "banned": self.banned,
            "pace": self.pace if self.pace >= 0 else None,
            "down_pace": self.down_pace if self.down_pace >= 0 else None,  # copies from the root
        }


@dataclass(kw_only=True)
class Batch:
    """The work of one event: its outputs, and who must be looked at before it returns."""

    assigned: list[Assignment] = field(default_factory=list)
    cancelled: list[Assignment] = field(default_factory=list)
    dirty: set[int] = field(default_factory=set)  # peers whose candidates changed
    freed: set[int] = field(default_factory=set)  # sources that may serve someone now

    def result(self) -> Actions:
        if not self.assigned and not self.cancelled:
            return NOTHING
        return Actions(assigned=tuple(self.assigned), cancelled=tuple(self.cancelled))


class Ledger:
    """Peers, holdings, transfers in flight and upload slots of one layer. See the module
    docstring; `LayerSchedule` validates the parameters."""

    def __init__(self, *, chunk_count: int, root: str, upload_slots: int) -> None:
        self.chunk_count = chunk_count
        self.root = root
        self.upload_slots = upload_slots
        self.ids: dict[str, int] = {root: ROOT}
        self.names: dict[int, str] = {ROOT: root}
        self.peers: dict[int, Peer] = {}  # live peers (banned ones included)
        # Live, not banned peers holding each chunk; the root is never listed.
        self.holders: list[set[int]] = [set() for _ in range(chunk_count)]
        self.free: set[int] = set()  # live, not banned peers with a free upload slot
        # Live peers still downloading (some chunk missing past their `past`), by depth.
        self.depths: Counter[int] = Counter({1: 0})
        # Every transfer in flight, in the order issued (expire walks it from the front).
        self.flights: dict[FlightKey, Assignment] = {}
        self.root_uploads = 0
        self.root_sending = bytearray(chunk_count)  # chunk in flight from the root
        # Flights whose source's slot freed while they go on (`lag`): their receiver is slow.
        self.lagging: set[FlightKey] = set()
        self.root_lagging = 0  # of them, the root's
        # Chunks on the root's disk: a prefix while it fetches the origin in order, a window
        # when its cache is smaller than the layer (`LayerSchedule.root_keeps` says what stays).
        self.root_held = bytearray(chunk_count)
        self.root_uploaded = 0
        self.avoiders = 0  # peers with a non-empty avoid set
        self.banned: set[int] = set()  # every node banned for this layer, gone or not
        # Transfers cancelled because their source left, the latest LEFT_FLIGHTS: a receiver
        # that had all the bytes still reports them, and a bad chunk still bans the source.
        self.left_flights: dict[FlightKey, None] = {}
        # chunk -> peers with open demand for which it is a candidate, in waiting order.
        self.waiting: dict[int, dict[int, None]] = {}

    def slots(self, peer: Peer) -> int:
        """Uploads `peer` may serve at once: its depth once its uploads proved to run at the
        usual pace (its depth measures its download link; a slow upload link given that many
        at once held every one of them up to the transfer timeout)."""
        return max(self.upload_slots, peer.depth) if peer.proven else self.upload_slots

    def set_depth(self, peer: Peer, depth: int, proven: bool | None = None) -> None:
        """`peer` keeps `depth` transfers in flight each way from now on (`proven`: its
        uploads run at the usual pace, or not; None: as they were)."""
        if self.peers.get(peer.ident) is not peer:
            return  # gone (a stale object): its books closed with it
        if self.downloading(peer):
            self.depths[peer.depth] -= 1
            self.depths[depth] += 1
        peer.depth = depth
        peer.proven = peer.proven if proven is None else proven
        if not peer.banned:
            if peer.uploads < self.slots(peer):
                self.free.add(peer.ident)
            else:
                self.free.discard(peer.ident)

    @property
    def deepest(self) -> int:
        """The greatest depth a peer still downloading asked for (the root's link is as far
        from them). A node that has every chunk it wants asks for no first copies: counting
        it kept the root's link split that many ways after the deep nodes were done."""
        return max((d for d, n in self.depths.items() if n > 0), default=1)

    def downloading(self, peer: Peer) -> bool:
        return peer.first < self.chunk_count

    def _recount(self, peer: Peer, was_downloading: bool) -> None:
        """Keep `depths` to the peers still downloading, as `peer.first` moved."""
        now = self.downloading(peer)
        if now != was_downloading:
            self.depths[peer.depth] += 1 if now else -1

    def check_chunk(self, chunk: int) -> None:
        if not 0 <= chunk < self.chunk_count:
            raise ValueError(f"chunk {chunk} outside [0, {self.chunk_count})")

    def peer(self, node: str) -> Peer:
        """The peer named `node`; a node never seen (or gone) joins with nothing held."""
        if node == self.root:
            raise ValueError(f"{node} is the root of this layer, not a downloader")
        if not node:
            raise ValueError("a node needs a name")
        ident = self.ids.get(node)
        if ident is None:
            ident = len(self.ids)
            self.ids[node] = ident
            self.names[ident] = node
        peer = self.peers.get(ident)
        if peer is None:
            peer = self.peers[ident] = Peer(ident, node, self.chunk_count)
            self._recount(peer, False)
            if ident in self.banned:
                peer.banned = True  # leaving and coming back does not lift a ban
            else:
                self.free.add(ident)
        return peer

    # ----------------------------------------------------------------------------------------
    # Holdings

    def add_holding(self, peer: Peer, chunk: int, batch: Batch) -> None:
        peer.held[chunk] = 1
        peer.have += 1
        if not peer.banned:
            self.holders[chunk].add(peer.ident)
            batch.freed.add(peer.ident)  # it may serve the waiters of this chunk
        if chunk == peer.first:
            first, held, n = chunk, peer.held, self.chunk_count
            while first < n and held[first]:
                first += 1
            peer.first = first
            self._recount(peer, True)
        batch.dirty.add(peer.ident)

    def drop_holdings(self, peer: Peer, batch: Batch) -> None:
        held, holders, ident = peer.held, self.holders, peer.ident
        for c in range(self.chunk_count):
            if held[c]:
                holders[c].discard(ident)
        batch.freed.add(ROOT)  # chunks only this node held are root-only again

    def replace_holdings(self, peer: Peer, have: Iterable[int], batch: Batch) -> None:
        new = bytearray(self.chunk_count)
        for c in have:
            self.check_chunk(c)
            new[c] = 1
        old = peer.held
        if new == old:
            return
        for c in range(self.chunk_count):
            if new[c] and not old[c]:
                self.add_holding(peer, c, batch)
            elif old[c] and not new[c]:  # evicted from its cache
                self.lose_holding(peer, c, batch)
        batch.dirty.add(peer.ident)

    def lose_holding(self, peer: Peer, chunk: int, batch: Batch) -> None:
        """`peer` no longer holds `chunk` (evicted from its cache); it may need it again."""
        peer.vouched.pop(chunk, None)
        if not peer.held[chunk]:
            return
        peer.held[chunk] = 0
        peer.have -= 1
        self.holders[chunk].discard(peer.ident)
        if chunk >= peer.past:
            was = self.downloading(peer)
            peer.first = min(peer.first, chunk)
            self._recount(peer, was)
        batch.freed.add(ROOT)  # it may be root-only again
        batch.dirty.add(peer.ident)

    def take_back(self, peer: Peer, chunk: int, src: int, batch: Batch) -> bool:
        """A transfer of `chunk` from `src` to `peer` was reported failed: True if it had said
        `finishing` (vouched for the chunk), whose holding goes; else a `finishing` of it still
        on its way is stale (`stale_finishing`)."""
        if peer.vouched.get(chunk) == src:
            self.lose_holding(peer, chunk, batch)
            return True
        peer.failed.add((chunk, src))
        return False

    def stale_finishing(self, peer: Peer, chunk: int, src: int | None) -> bool:
        """Whether a `finishing` of `chunk` from `src` must not make `peer` a holder: its
        `failed` overtook it (two requests in flight), or a root that never heard of the source
        (a new one) could not take the holding back (the node's `done` says, after its
        `have`)."""
        if src is None:
            return True
        if (chunk, src) in peer.failed:
            peer.failed.discard((chunk, src))
            return True
        return False

    def set_past(self, peer: Peer, past: int, batch: Batch) -> None:
        """`peer` no longer wants chunks below `past` (a node whose cache holds a window of
        the layer, its readers beyond them): its window starts at the first chunk it lacks
        from there."""
        past = min(past, self.chunk_count)
        if past <= peer.past:
            return
        peer.past = past
        was = self.downloading(peer)
        first, held, n = max(peer.first, past), peer.held, self.chunk_count
        while first < n and held[first]:
            first += 1
        peer.first = first
        self._recount(peer, was)
        batch.dirty.add(peer.ident)

    # ----------------------------------------------------------------------------------------
    # Transfers

    def assign(self, peer: Peer, chunk: int, src: int, now: float, batch: Batch) -> None:
        a = Assignment(node=peer.name, chunk=chunk, source=self.names[src], issued=now)
        key = (peer.ident, chunk, src)
        self.flights[key] = a
        sources = peer.incoming.get(chunk)
        if sources is None:
            peer.incoming[chunk] = [src]
        else:
            sources.append(src)
        peer.demand -= 1
        if peer.failed:
            peer.failed.discard((chunk, src))  # a new transfer: its `finishing` counts
        if src == ROOT:
            self.root_uploads += 1
            self.root_sending[chunk] = 1
            peer.from_root += 1
            peer.root_copies += 1
        else:
            s = self.peers[src]
            s.uploads += 1
            s.outgoing.add(key)
            if s.uploads >= self.slots(s):
                self.free.discard(src)
        batch.assigned.append(a)
        batch.dirty.add(peer.ident)

    def end(
        self, node: str, chunk: int, source: str, batch: Batch
    ) -> tuple[Peer, int, bool] | None:
        """A transfer of `chunk` from `source` to `node` ended: (the receiver, the source's id,
        whether it was still in flight), its slot released; None for a source never seen."""
        self.check_chunk(chunk)
        peer = self.peer(node)
        src = self.ids.get(source)
        if src is None:
            return None
        key = (peer.ident, chunk, src)
        in_flight = key in self.flights
        if in_flight:
            self.release(key, batch)
        return peer, src, in_flight

    def lag(self, key: FlightKey, batch: Batch) -> bool:
        """The transfer `key` runs far longer than usual: its source's slot frees (and a chunk
        from the root may go to another node too) while it goes on; its receiver keeps its
        download slot and counts as slow. False if it is not in flight or lags already."""
        node, chunk, src = key
        peer = self.peers.get(node)
        if key not in self.flights or key in self.lagging or peer is None:
            return False
        self.lagging.add(key)
        peer.lagging += 1
        self._leave_upload(key)
        if src == ROOT:
            self.root_lagging += 1
            self.root_sending[chunk] = 0
        batch.freed.add(src)
        batch.dirty.add(node)
        return True

    def release(self, key: FlightKey, batch: Batch) -> Assignment:
        """End a transfer (done, finishing, failed, cancelled): the source's slot frees (unless
        it freed when the transfer began to lag)."""
        a = self.flights.pop(key)
        node, chunk, src = key
        peer = self.peers.get(node)
        lagging = key in self.lagging
        if lagging:
            self.lagging.discard(key)
            if peer is not None:
                peer.lagging -= 1
            if src == ROOT:
                self.root_lagging -= 1
        self._leave_download(key, peer)
        if not lagging:
            self._leave_upload(key)
        if src == ROOT:
            if not lagging:  # a lagging root copy's chunk may be in flight again meanwhile
                self.root_sending[chunk] = 0
        elif src in self.peers:
            self.peers[src].outgoing.discard(key)
        if peer is not None:
            batch.dirty.add(node)
        batch.freed.add(src)
        return a

    def _leave_download(self, key: FlightKey, peer: Peer | None) -> None:
        """The transfer `key` stops counting as a download of its receiver (`peer`, None if
        gone)."""
        _, chunk, src = key
        if peer is not None:
            sources = peer.incoming[chunk]
            sources.remove(src)
            if not sources:
                del peer.incoming[chunk]
            if src == ROOT:
                peer.from_root -= 1

    def _leave_upload(self, key: FlightKey) -> None:
        """The transfer `key` stops counting as an upload of its source."""
        src = key[2]
        if src == ROOT:
            self.root_uploads -= 1
        else:
            s = self.peers.get(src)
            if s is not None:
                s.uploads -= 1
                if not s.banned and s.uploads < self.slots(s):
                    self.free.add(src)

    # ----------------------------------------------------------------------------------------
    # Faults and departures

    def avoid(self, peer: Peer, source: int) -> None:
        """`peer` takes nothing from `source` from now on."""
        if not peer.avoid:
            self.avoiders += 1
        peer.avoid.add(source)

    def ban(self, peer: Peer, batch: Batch) -> None:
        """`peer` served bad data: it is never a source again (it may still download)."""
        if peer.banned:
            return
        peer.banned = True
        self.banned.add(peer.ident)
        for key in list(peer.outgoing):
            batch.cancelled.append(self.release(key, batch))
        self.drop_holdings(peer, batch)
        self.free.discard(peer.ident)
        batch.freed.discard(peer.ident)

    def remove(self, peer: Peer, batch: Batch) -> None:
        """`peer` is gone: its transfers both ways end as cancelled, its holdings vanish, and
        nobody avoids it any more (a ban stays, in `banned`)."""
        ident = peer.ident
        for key in peer.outgoing:
            self.left_flights[key] = None
        for old in list(islice(self.left_flights, max(0, len(self.left_flights) - LEFT_FLIGHTS))):
            del self.left_flights[old]
        for chunk, sources in list(peer.incoming.items()):
            for src in list(sources):
                batch.cancelled.append(self.release((ident, chunk, src), batch))
        for key in list(peer.outgoing):
            batch.cancelled.append(self.release(key, batch))
        self.drop_holdings(peer, batch)
        self.free.discard(ident)
        if peer.avoid:
            self.avoiders -= 1
        if self.avoiders:
            for other in self.peers.values():
                if ident in other.avoid:
                    other.avoid.discard(ident)
                    if not other.avoid:
                        self.avoiders -= 1
        del self.peers[ident]
        if self.downloading(peer):
            self.depths[peer.depth] -= 1
        batch.dirty.discard(ident)
        batch.freed.discard(ident)

    def left_with(self, peer: Peer, chunk: int, src: int) -> bool:
        """Whether a transfer of `chunk` from `src` to `peer` was cancelled when `src` left
        (remembered once: the receiver reports it once)."""
        key = (peer.ident, chunk, src)
        if key not in self.left_flights:
            return False
        del self.left_flights[key]
        return True

    def flying(self, node: str, chunk: int, source: str) -> bool:
        return (self.ids.get(node, -1), chunk, self.ids.get(source, -1)) in self.flights

    def progress(self, *, origin: int, typical: float | None) -> dict:
        """Counts for status pages and tests: per node, per chunk, and the root's."""
        return {
            "chunks": self.chunk_count,
            "origin": origin,
            "root_holds": sum(self.root_held),
            "root": {"uploading": self.root_uploads, "uploaded": self.root_uploaded},
            "copies": [len(h) for h in self.holders],
            "in_flight": len(self.flights),
            "typical_transfer": typical,
            "complete": sum(1 for p in self.peers.values() if p.first >= self.chunk_count),
            "nodes": {p.name: p.progress() for p in self.peers.values()},
        }

    # ----------------------------------------------------------------------------------------
    # Waiting lists: chunk -> nodes with open demand for which it is a candidate

    def unwait(self, peer: Peer) -> None:
        waiting, ident = self.waiting, peer.ident
        for c in peer.waiting_on:
            waiters = waiting[c]
            del waiters[ident]
            if not waiters:
                del waiting[c]
        peer.waiting_on = []

    def wait(self, peer: Peer, chunks: list[int]) -> None:
        waiting, ident = self.waiting, peer.ident
        for c in chunks:
            waiters = waiting.get(c)
            if waiters is None:
                waiting[c] = {ident: None}
            else:
                waiters[ident] = None
        peer.waiting_on = chunks
