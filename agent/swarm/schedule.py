"""The swarm scheduler for one layer: who fetches which chunk from whom. Pure, no I/O.

Theory of operation
-------------------
One `LayerSchedule` per layer lives on the root that owns the layer (the tracker). The root
fetches the layer from the origin in order and reports how far it got (`origin_progress`).
Agents ask for work (`request`, the plan long-poll) and report the end of each transfer
(`completed`, `failed`); the adapter reports agents that are gone (`leave`) and calls `expire`
about every half second. Every event carries `now` (never decreasing) and returns `Actions`
(assignments made, for any node, and cancelled); it never reads a clock nor sends anything.
This module holds the rules (who may take what) and the matching that applies them after each
event; the facts they read (holdings, transfers, free slots, bans) are the `Ledger`'s
(agent/swarm/ledger.py), which keeps its indexes consistent and makes no decision.

An agent's `request` states its *demand*: how many new transfers it could start now (its free
download slots less the assignments it has not seen yet: `depth`, and a spare for a second
source of a late download). Demand that cannot be met at once stays open for a later event (a
chunk landing at the root, a slot freeing); the adapter holds the agent's long poll and hands
it what was assigned meanwhile. The next `request` replaces the demand.

The rules bring a swarm near the Kumar-Ross floor (docs/ARCHITECTURE.md, "The floor"). Transfers
sharing a link each run slower, so every one of a chunk's log2(N) hops takes longer (the
simulator, `pollen simulate`, confirms it): the schedule keeps *one transfer per link* where a
chunk outlasts a round trip, and the root's link, the narrowest point, busy with first copies.

- **Window.** A node is given chunks in [first missing, first missing + window) only (window
  >= twice its depth), lowest first: its client reads the layer in order as the swarm fills.
- **Depth, slots.** A node downloads `depth` chunks at a time (1 unless its link moves a chunk
  faster than a few plan round trips, agent/swarm/depth.py: at 10 Gbit/s a 4 MiB chunk lasts
  3.4 ms); demand beyond that only brings a second source of a *late* transfer (see Late). A
  peer uploads `upload_slots` at once (1 on a uniform cluster), its depth once its uploads ran
  at the usual pace; the root max(`root_upload_slots` (a tracker's: 2), the greatest depth
  asked). A transfer comes from the least-loaded holder with a free slot, the fastest among
  equals (a peer's *pace*: its uploads' mean duration); else the node waits.
- **Striping.** The root sends only chunks no live peer holds ("root-only"; for a node also a
  chunk that only slow peers and peers it avoids hold), one copy at a time, to a node with a
  download slot free. A freed root slot sends the lowest root-only chunk to a waiting node
  that is not slow and had the fewest from the root; a node that asks while the root is idle
  takes a root-only chunk first. So first copies land on different nodes, which serve them to
  the rest: the root's link carries each chunk once.
- **Spreading.** A peer whose slot frees (or that just finished a chunk) serves the first
  waiter of the rarest chunk it holds (fewest holders, then lowest index): fresh chunks spread
  by doubling, old ones (many hold them) come from whoever is idle.
- **Slow sources.** A peer whose pace is LATE times the usual transfer duration or worse only
  serves chunks that no faster peer holds, and gets no first copy from the root while a
  faster node still wants that chunk: a slow link loses its requests to faster holders. An
  upload turning that late makes its source slow then (`expire` offers the root's slots to
  the nodes waiting for what only slow peers hold: an upload to a node that died unnoticed
  holds its source's slot until the root forgets that node).
- **Slow receivers.** A root copy running LATE times the usual duration (before one is known:
  a chunk at 25 Mbit/s; the root's own copies' if longer, agent/swarm/pace.py) *lags*: it goes
  on without the root's slot, and its chunk may go to another node. A node whose root copies
  lag gets no first copy another node waits for, and its transfers count in no duration nor
  pace (one straggler held the root's only slot, and every node's window, for a whole slow
  chunk).
- **Pipelining, cut-through.** A transfer `finishing` (its last bytes) counts as completed:
  both links take their next transfer as it ends, and its receiver holds the chunk (its P2P
  port relays it: the bytes in so far, the rest once verified), so the chunk's next hop starts
  then too. No `done` follows; a `failed` takes it back.
- **Late transfers, endgame.** A transfer from a peer running LATE times the usual duration
  (the usual duration once the node lacks at most `endgame` chunks) may get an idle second
  source if the node has demand to spare; the first to end wins (`expire` looks for them).
- **Faults.** `failed(bad_data=True)`: the source's bytes did not match the chunk's sha256; it
  is *banned* for this layer (never a source again, its uploads cancelled; it may download),
  if the reporter was given that transfer (also when the source left meanwhile).
  `failed(bad_data=False)` (timeout, connection error) and `expire` after `transfer_timeout`:
  the slot frees and that node *avoids* that source; a node avoiding every fast holder of a
  chunk gets it from the root. `missing`: the source no longer holds the chunk (evicted): no longer
  a holder, nobody avoids it. `leave`: its holdings, transfers and slots vanish.
- **The root's window.** A root whose cache is smaller than the layer holds a window of it
  (`root_stored`, `root_released`; agent/swarm/rootwindow.py): a chunk may go once every live
  node has it or is past it (`root_keeps`); a chunk nodes wait for that nobody they may take
  it from holds is `lost` and the root fetches it again from the origin.
Cost per event: docs/ARCHITECTURE.md, "The swarm" (nothing is O(N·C)).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from agent.cache.chunks import ChunkLayout
from agent.swarm.ledger import NOTHING, ROOT, Actions, Assignment, Batch, FlightKey, Ledger, Peer
from agent.swarm.pace import LATE, Pace
from agent.swarm.protocol import MAX_DEPTH, ROOT_WINDOW
from agent.swarm.rootwindow import lost_chunks, root_keeps

__all__ = ["NOTHING", "Actions", "Assignment", "LayerSchedule"]

SCAN = 16  # idle holders looked at, at most, when choosing a source among many


class LayerSchedule:
    """Chunk scheduling for one layer, on the root that owns it. See the module docstring."""

    def __init__(
        self,
        *,
        chunk_count: int,
        root: str,
        window: int = ROOT_WINDOW,
        upload_slots: int = 1,
        root_upload_slots: int = 1,
        transfer_timeout: float = 10.0,
        endgame: int = 2,
        expected: float = 0.0,
        layout: ChunkLayout | None = None,
    ) -> None:
        if chunk_count < 0:
            raise ValueError(f"chunk_count must be >= 0, not {chunk_count}")
        if window < 1 or upload_slots < 1 or root_upload_slots < 1:
            raise ValueError("window, upload_slots and root_upload_slots must be >= 1")
        if transfer_timeout <= 0 or endgame < 0:
            raise ValueError("transfer_timeout must be > 0 and endgame >= 0")
        if not root:
            raise ValueError("the root needs a name")
        self.chunk_count = chunk_count
        self.root = root
        self.window = window
        self.upload_slots = upload_slots
        self.root_upload_slots = root_upload_slots
        self.transfer_timeout = transfer_timeout
        self.endgame = endgame

        self._origin = 0  # the root's download from the origin passed chunks [0, _origin)
        self._ledger = ledger = Ledger(
            chunk_count=chunk_count, root=root, upload_slots=upload_slots
        )
        # The ledger's indexes the rules read in their inner loops, bound once: the ledger
        # changes them in place and never rebinds them.
        self._peers: dict[int, Peer] = ledger.peers
        self._holders: list[set[int]] = ledger.holders
        self._free: set[int] = ledger.free
        self._flights: dict[FlightKey, Assignment] = ledger.flights
        self._root_sending: bytearray = ledger.root_sending
        self._root_held: bytearray = ledger.root_held
        self._waiting: dict[int, dict[int, None]] = ledger.waiting
        if layout is not None and layout.count != chunk_count:
            raise ValueError(f"a layout of {layout.count} chunks for {chunk_count}")
        scale, least = (layout.scale, layout.scale(0)) if layout is not None else (None, 1.0)
        self._pace = pace = Pace(ledger, expected, scale, least)
        self._slow, self._fast_holder = pace.slow, pace.fast_holder

    # ----------------------------------------------------------------------------------------
    # Events

    def origin_progress(self, chunks: int, now: float) -> Actions:
        """The root now holds chunks [0, chunks), fetched from the origin in order."""
        self._tick(now)
        if not 0 <= chunks <= self.chunk_count:
            raise ValueError(f"origin progress {chunks} outside [0, {self.chunk_count}]")
        if chunks <= self._origin:
            return NOTHING
        self._root_held[self._origin : chunks] = b"\x01" * (chunks - self._origin)
        self._origin = chunks
        return self._settle(Batch(freed={ROOT}), now)

    def root_stored(self, chunk: int, now: float) -> Actions:
        """The root holds `chunk` now: its window moved on, or it fetched a lost chunk again."""
        self._tick(now)
        self._ledger.check_chunk(chunk)
        self._origin = max(self._origin, chunk + 1)
        if self._root_held[chunk]:
            return NOTHING
        self._root_held[chunk] = 1
        return self._settle(Batch(freed={ROOT}), now)

    def root_released(self, chunk: int, now: float) -> None:
        """The root let `chunk` go (its cache holds a window of the layer; `root_keeps` said
        it may)."""
        self._tick(now)
        self._ledger.check_chunk(chunk)
        self._root_held[chunk] = 0

    def request(
        self,
        node: str,
        *,
        have: Iterable[int] | None = None,
        want: int,
        now: float,
        past: int = 0,
        depth: int = 1,
    ) -> Actions:
        """`node` can start `want` new transfers (this replaces its open demand); `have`, if
        given, is every chunk it holds (it replaces what the schedule knew); chunks below
        `past` it no longer wants (a cache window behind its readers); it keeps `depth`
        transfers in flight each way (see Depth)."""
        self._tick(now)
        if want < 0 or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"want must be >= 0 and depth in 1..{MAX_DEPTH}: {want}, {depth}")
        peer = self._ledger.peer(node)
        batch = Batch()
        if depth != peer.depth:
            self._ledger.set_depth(peer, depth)
            batch.freed.update((peer.ident, ROOT))  # its slots, and maybe the root's, grew
        if have is not None:
            self._ledger.replace_holdings(peer, have, batch)
        if past:
            self._ledger.set_past(peer, past, batch)
        peer.demand = want
        batch.dirty.add(peer.ident)
        return self._settle(batch, now)

    def completed(self, node: str, chunk: int, source: str, now: float) -> Actions:
        """`node` holds `chunk` now, fetched from `source`, whose slot frees.

        Another transfer of that chunk to that node (the endgame's loser) is cancelled; a later
        report of it is ignored. A report of a transfer the schedule does not know (it expired,
        or the node fetched on its own) still records the chunk."""
        self._tick(now)
        ledger, batch = self._ledger, Batch()
        ledger.check_chunk(chunk)
        peer = ledger.peer(node)
        peer.vouched.pop(chunk, None)  # its bytes are in: nothing left to take back
        key = (peer.ident, chunk, ledger.ids.get(source, -1))
        if key in self._flights:
            lagged = key in ledger.lagging or self._pace.slow_receiver(peer)
            took = now - ledger.release(key, batch).issued
            self._pace.ended(key, peer, took, lagged=lagged)
            src = key[2]
            if src == ROOT:
                ledger.root_uploaded += 1
            elif src in self._peers:
                self._peers[src].uploaded += 1
        if not peer.held[chunk]:
            peer.downloaded += 1
            ledger.add_holding(peer, chunk, batch)
            slow = self._pace.slow_receiver(peer)
            for other in list(peer.incoming.get(chunk, ())):
                lost = (peer.ident, chunk, other)
                lagged = slow or lost in ledger.lagging
                loser = ledger.release(lost, batch)
                batch.cancelled.append(loser)
                self._pace.cut(lost, peer, now - loser.issued, lagged=lagged)
        return self._settle(batch, now)

    def finishing(self, node: str, chunk: int, source: str, now: float) -> Actions:
        """The transfer is in its last bytes: it counts as `completed` from here, `node` as a
        holder (see Pipelining); one that fails after all is reported `failed`, which takes
        the holding back. One no longer known (expired: a straggler's copies outlast the
        timeout) still brings the chunk, as a `done` would: no report follows this one."""
        ledger = self._ledger
        ledger.check_chunk(chunk)
        peer = ledger.peer(node)
        src = ledger.ids.get(source)
        if ledger.stale_finishing(peer, chunk, src):
            self._tick(now)
            return NOTHING
        fresh, before = not peer.held[chunk], peer.vouched.get(chunk)
        actions = self.completed(node, chunk, source, now)  # (its bytes have not landed yet)
        src = src if fresh else before
        if src is not None:
            peer.vouched[chunk] = src
        return actions

    def failed(self, node: str, chunk: int, source: str, *, bad_data: bool, now: float) -> Actions:
        """The transfer of `chunk` from `source` to `node` ended without the chunk. `bad_data`:
        the bytes did not match the chunk's sha256, and `source` is banned for this layer (its
        uploads are cancelled; never a source again), if `node` was given that transfer: in
        flight, or vouched for by its `finishing`. A report of a transfer the root never
        assigned bans nobody (any token holder could name any node), and a source that left
        meanwhile (the receiver checks the chunk once all of it came) stays banned when it
        comes back. Otherwise (timeout, connection error) the slot frees and `node` avoids
        `source` from now on."""
        self._tick(now)
        batch = Batch()
        ended = self._ledger.end(node, chunk, source, batch)
        if ended is None:
            return NOTHING
        peer, src, given = ended
        if self._ledger.take_back(peer, chunk, src, batch):
            given = True  # it failed after its `finishing`: not here after all
        if self._ledger.left_with(peer, chunk, src):
            given = True  # cancelled when its source left, its bytes all in by then
        source_peer = self._peers.get(src)  # (never the root: not a peer)
        if bad_data and given and src != ROOT:
            if source_peer is not None:
                self._ledger.ban(source_peer, batch)
            else:
                self._ledger.banned.add(src)  # gone meanwhile: still banned when back
        elif given and source_peer is not None and not bad_data:
            self._ledger.avoid(peer, src)
        return self._settle(batch, now)

    def missing(self, node: str, chunk: int, source: str, now: float) -> Actions:
        """`source` answered that it does not hold `chunk` (its cache evicted it): the slot
        frees, the source no longer counts as a holder of that chunk, and the chunk goes to
        another holder. No fault of the source: `node` does not avoid it."""
        self._tick(now)
        batch = Batch()
        ended = self._ledger.end(node, chunk, source, batch)
        if ended is None:
            return NOTHING
        src = ended[1]
        if src == ROOT:
            self._root_held[chunk] = 0  # it comes back with the root's next report
        elif src in self._peers:
            self._ledger.lose_holding(self._peers[src], chunk, batch)
        return self._settle(batch, now)

    def leave(self, node: str, now: float) -> Actions:
        """`node` is gone: its holdings, its transfers (both ways, returned as cancelled; its
        downloaders ask again when they notice) and its demand vanish."""
        self._tick(now)
        ident = self._ledger.ids.get(node)
        peer = self._peers.get(ident) if ident is not None else None
        if peer is None:
            return NOTHING
        batch = Batch()
        self._ledger.unwait(peer)
        self._ledger.remove(peer, batch)
        return self._settle(batch, now)

    def expire(self, now: float) -> Actions:
        """The clock: call it about every half second.

        Cancels the transfers issued `transfer_timeout` ago or earlier (`Pace.time_out`), and
        gives late transfers a second source where the node has demand to spare."""
        self._tick(now)
        batch = Batch()
        self._pace.time_out(now - self.transfer_timeout, now, batch)
        self._pace.lag_root_copies(now, self._root_slots(), batch)
        self._pace.look_at_late(now, bool(self._waiting), batch)
        if not batch.cancelled and not batch.dirty and not batch.freed:
            return NOTHING
        return self._settle(batch, now)

    # ----------------------------------------------------------------------------------------
    # Reading the state

    def holds(self, node: str, chunk: int) -> bool:
        """Whether the schedule believes `node` (or the root) holds `chunk`."""
        self._ledger.check_chunk(chunk)
        if node == self.root:
            return bool(self._root_held[chunk])
        peer = self._peers.get(self._ledger.ids.get(node, -1))
        return peer is not None and bool(peer.held[chunk])

    def flying(self, node: str, chunk: int, source: str) -> bool:
        """Whether the transfer of `chunk` from `source` to `node` is in flight."""
        return self._ledger.flying(node, chunk, source)

    def in_flight(self) -> list[Assignment]:
        """Every transfer the schedule believes is running, oldest first."""
        return list(self._flights.values())

    def root_keeps(self, chunk: int) -> bool:
        """Whether the root must keep `chunk` (agent/swarm/rootwindow.py)."""
        return root_keeps(self._ledger, chunk)

    def lost(self) -> list[int]:
        """Chunks only the origin has now (agent/swarm/rootwindow.py)."""
        return lost_chunks(self._ledger, self._origin)

    def progress(self) -> dict:
        """Counts for status pages and tests: per node, per chunk, and the root's."""
        return self._ledger.progress(
            origin=self._origin, typical=self._pace.typical if self._pace.typical >= 0 else None
        )

    # ----------------------------------------------------------------------------------------
    # Who may take what (durations and who is slow by them: agent/swarm/pace.py; the other
    # facts are the ledger's: agent/swarm/ledger.py)

    def _tick(self, now: float) -> None:
        self._pace.tick(now)

    def _late(self, peer: Peer, chunk: int, sources: list[int], now: float) -> bool:
        """Whether `chunk`, in flight to `peer` from one peer, may get a second source: that
        transfer has run LATE times the usual duration (in the endgame: the usual duration),
        and `peer` is no slow receiver (its own link is why: a second source would only take
        another fast peer's slot, and a straggler took two peers' slots per layer so)."""
        if len(sources) != 1 or sources[0] == ROOT or self._pace.typical <= 0:
            return False
        if self._pace.slow_receiver(peer):
            return False
        issued = self._flights[(peer.ident, chunk, sources[0])].issued
        endgame = self.chunk_count - max(peer.have, peer.first) <= self.endgame
        limit = (1.0 if endgame else LATE) * self._pace.typical * self._pace.scale(chunk)
        return now - issued > limit

    def _candidates(self, peer: Peer, now: float) -> list[int]:
        """Chunks `peer` may be given now, lowest first: those in flight to it that are late (a
        second source), and, below its depth, those missing inside its window."""
        if peer.from_root:
            return []
        incoming, held = peer.incoming, peer.held  # (a chunk in `held` has its `done` coming)
        late = [c for c, src in incoming.items() if not held[c] and self._late(peer, c, src, now)]
        if len(incoming) >= peer.depth:
            return sorted(late)
        end = min(peer.first + self._window(peer), self.chunk_count)
        fresh = [c for c in range(peer.first, end) if not held[c] and c not in incoming]
        return sorted(fresh + late)

    def _may_take(self, peer: Peer, chunk: int, src: Peer, now: float) -> bool:
        """Whether `peer` may now fetch `chunk` from `src`, a peer holding it with a free slot
        (the window aside: the waiting lists reflect it)."""
        if peer.demand <= 0 or peer.held[chunk] or peer.from_root or chunk < peer.past:
            return False
        if chunk >= peer.first + self._window(peer):
            return False
        if peer.avoid and src.ident in peer.avoid:
            return False
        if self._slow(src) and self._fast_holder(chunk, src.ident, peer.avoid):
            return False
        sources = peer.incoming.get(chunk)
        if sources is None and len(peer.incoming) >= peer.depth:
            return False  # its downloads are all busy
        if sources is not None:
            if src.uploads or src.ident in sources:
                return False  # busy: only an idle second source for a late chunk
            return self._late(peer, chunk, sources, now)
        return True

    def _best_source(self, peer: Peer, chunk: int) -> int | None:
        """The least-loaded, then fastest, peer holding `chunk` that `peer` may take it from.

        Stops at the first idle holder of usual speed, and after SCAN eligible ones."""
        holders = self._holders[chunk]
        if not holders or peer.from_root:
            return None
        sources = peer.incoming.get(chunk)
        if sources is None and len(peer.incoming) >= peer.depth:
            return None  # its downloads are all busy
        avoid = peer.avoid
        typical = self._pace.typical
        best, best_key, seen = None, (MAX_DEPTH + self.upload_slots, 0.0), 0
        peers = self._peers
        for h in holders & self._free:  # the intersection runs in C over the smaller set
            if (avoid and h in avoid) or (sources and h in sources):
                continue
            p = peers[h]
            if sources and p.uploads:
                continue  # a second source must be idle
            if self._slow(p) and self._fast_holder(chunk, h, avoid):
                continue
            pace = p.pace if p.pace >= 0 else typical
            key = (p.uploads, pace)
            if key < best_key:
                best, best_key = h, key
                if p.uploads == 0 and pace <= typical:
                    break
            seen += 1
            if seen >= SCAN:
                break
        return best

    def _root_may_send(self, peer: Peer, chunk: int) -> bool:
        """Whether the root may send `chunk` to `peer` now: a root slot is free; the chunk is at
        the root, not being sent, and root-only for `peer` (no peer holds it but slow ones
        and ones `peer` avoids); `peer` downloads nothing else, and is not slow unless all nodes
        that still want the chunk are (a slow node starved while the fast ones were past it)."""
        if (
            not self._root_held[chunk]
            or self._ledger.root_uploads >= self._root_slots()
            or self._root_sending[chunk]
            or peer.demand <= 0
            or peer.held[chunk]
            or len(peer.incoming) >= peer.depth
            or chunk in peer.incoming
        ):
            return False
        if self._slow(peer) and any(
            not (p.held[chunk] or chunk < p.past or self._slow(p)) for p in self._peers.values()
        ):
            return False  # first copies go to nodes that pass them on at the usual speed
        if self._pace.slow_receiver(peer) and any(
            w != peer.ident and not self._pace.sluggish(self._peers[w])
            for w in islice(self._waiting.get(chunk, ()), SCAN)
        ):
            return False  # ... and that take them at the usual speed, if one waits for it
        return not self._fast_holder(chunk, ROOT, peer.avoid)

    def _window(self, peer: Peer) -> int:  # room for `depth` transfers and as many next
        return self.window if peer.depth == 1 else max(self.window, 2 * peer.depth)

    def _root_slots(self) -> int:  # the root's link is as far from the nodes as theirs
        return max(self.root_upload_slots, self._ledger.deepest)

    # ----------------------------------------------------------------------------------------
    # Matching

    def _settle(self, batch: Batch, now: float) -> Actions:
        """Meet open demand until nothing more can be assigned, then return the batch.

        Afterwards, for every node with open demand and each of its candidate chunks, no source
        it may take that chunk from has a free slot (but for transfers turning late: `expire`).
        Freed sources are offered to the nodes already waiting before the nodes whose state
        just changed are served: the root first (its slot goes to the waiter that deserves it,
        not to whoever is looked at first), then peers (the longest waiting get the slots)."""
        peers = self._peers
        self._pace.settling(True)
        try:
            while batch.dirty or batch.freed:
                while batch.freed:
                    src = ROOT if ROOT in batch.freed else batch.freed.pop()
                    if src == ROOT:
                        batch.freed.discard(ROOT)
                        self._offer_root(now, batch)
                    elif src in peers:
                        self._offer(peers[src], now, batch)
                if batch.dirty:
                    peer = peers.get(batch.dirty.pop())
                    if peer is not None:
                        self._serve(peer, now, batch)
        finally:
            self._pace.settling(False)
        return batch.result()

    def _serve(self, peer: Peer, now: float, batch: Batch) -> None:
        """Demand-driven: a root-only chunk if the root is free, else the lowest candidate that
        has a source; when nothing can be assigned, the node waits on its candidates."""
        batch.dirty.discard(peer.ident)
        if peer.waiting_on:
            self._ledger.unwait(peer)
        while peer.demand > 0:
            candidates = self._candidates(peer, now)
            chosen = None
            if len(peer.incoming) < peer.depth and self._ledger.root_uploads < self._root_slots():
                for c in candidates:
                    if self._root_may_send(peer, c):
                        chosen = (c, ROOT)
                        break
            if chosen is None:
                for c in candidates:
                    src = self._best_source(peer, c)
                    if src is not None:
                        chosen = (c, src)
                        break
            if chosen is None:
                if candidates:
                    self._ledger.wait(peer, candidates)
                break
            self._ledger.assign(peer, chosen[0], chosen[1], now, batch)
        batch.dirty.discard(peer.ident)  # _assign marked it; its waiting list is fresh

    def _offer(self, src: Peer, now: float, batch: Batch) -> None:
        """Source-driven: a peer with a free slot serves the first waiter of the rarest chunk
        it holds (fewest holders, then lowest index)."""
        if src.banned:
            return
        ident, held, holders, peers = src.ident, src.held, self._holders, self._peers
        slow = self._slow(src)
        while src.uploads < self._ledger.slots(src):
            best_key: tuple[int, int] | None = None
            best: tuple[Peer, int] | None = None
            for c, waiters in self._waiting.items():
                if not held[c]:
                    continue
                key = (len(holders[c]), c)
                if best_key is not None and key >= best_key:
                    continue
                if slow and self._fast_holder(c, ident):
                    continue
                for w in waiters:
                    p = peers[w]
                    if self._may_take(p, c, src, now):
                        best_key, best = key, (p, c)
                        break
            if best is None:
                return
            peer, chunk = best
            source = ident
            if src.uploads or (self._pace.typical > 0 and src.pace > self._pace.typical):
                # Another holder may be idle, or faster.
                source = self._best_source(peer, chunk) or ident
            self._ledger.assign(peer, chunk, source, now, batch)
            self._serve(peer, now, batch)

    def _offer_root(self, now: float, batch: Batch) -> None:
        """The root's free slots: the lowest root-only chunk goes to the waiter for it that had
        the fewest chunks from the root (the first of them in waiting order)."""
        peers = self._peers
        while self._ledger.root_uploads < self._root_slots():
            chosen: tuple[Peer, int] | None = None
            for c in sorted(self._waiting):
                if not self._root_held[c] or self._root_sending[c]:
                    continue
                if not self._ledger.avoiders and self._fast_holder(c, ROOT):
                    continue
                best: Peer | None = None
                for w in self._waiting[c]:
                    p = peers[w]
                    if not self._root_may_send(p, c):
                        continue
                    if best is None or p.root_copies < best.root_copies:
                        best = p
                        if p.root_copies == 0:
                            break
                if best is not None:
                    chosen = (best, c)
                    break
            if chosen is None:
                return
            peer, chunk = chosen
            self._ledger.assign(peer, chunk, ROOT, now, batch)
            self._serve(peer, now, batch)
