"""How long transfers take, and who is slow: the schedule's reading of time. Pure, no I/O.

Theory of operation. Every completed transfer's duration feeds three moving averages: the
usual duration (`typical`), its source's upload pace and its receiver's download pace. A link
is slow both ways, so a straggler's transfers are slow whoever sends them: a transfer that
its receiver's slow link explains (a receiver known slow, or one this slow from a source known
fast) counts in its receiver's pace only, never in its source's nor in the usual duration, and
an upload running long to such a receiver does not make its source look slow. Otherwise one
node on a thin link made its fast sources look slow and every late transfer look on time.

`slow` (uploads), `slow_down` (downloads) and `late` compare with LATE times the usual
duration. The root sends a root-only chunk one copy at a time, and the swarm waits for that
first copy: a copy running late (to a straggler, or a node not known slow yet) neither holds
a root slot (`root_free`) nor stops a second copy of its chunk (`root_copy_late`).
"""

from __future__ import annotations

from agent.swarm.ledger import LATE, ROOT, Ledger, Peer, moving_average, receiver_explains


class Pace:
    """The usual transfer duration and the pace rules, over the ledger's peers and flights."""

    def __init__(self, ledger: Ledger, *, chunk_count: int, endgame: int) -> None:
        self._ledger = ledger
        self._chunk_count = chunk_count
        self._endgame = endgame
        self.typical = -1.0  # moving average of transfer durations (-1: none yet)
        self.now = float("-inf")

    def clock(self, source: int, took: float, receiver: Peer | None = None) -> None:
        """Count a transfer's duration (or a lower bound, for one cut short) in its source's
        pace; a completed one (`receiver` given) in the usual duration and its receiver's
        pace too, unless the receiver's slow link explains it (then not in the first two)."""
        peer = self._ledger.peers.get(source)
        if receiver is not None:
            fast = source == ROOT or (peer is not None and 0 <= peer.pace <= self.typical)
            explained = receiver_explains(receiver.down_pace, fast, took, self.typical)
            receiver.down_pace = moving_average(receiver.down_pace, took)
            if explained:
                return
            self.typical = moving_average(self.typical, took)
        if peer is not None:
            peer.pace = moving_average(peer.pace, took)

    def slow(self, peer: Peer) -> bool:
        """A peer whose uploads take LATE times the usual duration or longer (its pace, or an
        upload running that long to a receiver not known to be slow itself)."""
        if self.typical <= 0:
            return False
        limit = LATE * self.typical
        if peer.pace > limit:
            return True
        flights, since, peers = self._ledger.flights, self.now - limit, self._ledger.peers
        return any(
            flights[key].issued < since and not self.slow_down(peers[key[0]])
            for key in peer.outgoing
        )

    def slow_down(self, peer: Peer) -> bool:
        """A peer whose downloads take LATE times the usual duration or longer."""
        return self.typical > 0 and peer.down_pace > LATE * self.typical

    def fast_holder(self, chunk: int, besides: int) -> bool:
        """Whether a peer other than `besides`, and not slow, holds `chunk` (busy or not)."""
        peers = self._ledger.peers
        return any(h != besides and not self.slow(peers[h]) for h in self._ledger.holders[chunk])

    def late(self, peer: Peer, chunk: int, sources: list[int], now: float) -> bool:
        """Whether `chunk`, in flight to `peer` from one peer, may get a second source: that
        transfer has run LATE times the usual duration (in the endgame: the usual duration)."""
        if len(sources) != 1 or sources[0] == ROOT or self.typical <= 0:
            return False
        issued = self._ledger.flights[(peer.ident, chunk, sources[0])].issued
        endgame = self._chunk_count - max(peer.have, peer.first) <= self._endgame
        return now - issued > (1.0 if endgame else LATE) * self.typical

    def root_free(self, slots: int) -> bool:
        """Whether the root has a free upload slot. A transfer to a slow receiver holds none,
        nor one running LATE times the usual duration (the root's other transfers set that
        duration: this one is held back at the other end), up to `slots` more transfers:
        a straggler's first copy does not stop the root's link for everyone."""
        ledger = self._ledger
        if ledger.root_uploads < slots:
            return True
        if self.typical <= 0 or len(ledger.root_flights) >= 2 * slots:
            return False
        peers, flights, since = ledger.peers, ledger.flights, self.now - LATE * self.typical
        busy = sum(
            1
            for key in ledger.root_flights
            if not (self.slow_down(peers[key[0]]) or flights[key].issued < since)
        )
        return busy < slots

    def root_copy_late(self, chunk: int) -> bool:
        """Whether the root's copy of `chunk` in flight is late (or to a slow receiver): the
        root may send another, since the swarm waits for the first copy of every chunk."""
        if self.typical <= 0:
            return False
        peers, flights, since = (
            self._ledger.peers,
            self._ledger.flights,
            self.now - LATE * self.typical,
        )
        return any(
            key[1] == chunk and (flights[key].issued < since or self.slow_down(peers[key[0]]))
            for key in self._ledger.root_flights
        )
