"""How long transfers take, and who is slow by it: the schedule's clock. Pure, no I/O.

The schedule (agent/swarm/schedule.py) judges sources and receivers against the *usual*
transfer duration: the moving average of every transfer it saw end, or, before one ended,
`expected` (a chunk at ASSUMED_RATE). A source is slow when its uploads take LATE times the
usual duration; a receiver is slow when a copy from the root does (such a copy measures the
receiver: a root whose link is no wider than the nodes' shares it between its slots, so a
copy from it lags only at LATE times its own copies' usual duration, `root_typical`) or when
one of its downloads lags. A slow receiver's transfers count neither in the usual duration nor
in its source's pace: a straggler would otherwise make its fast sources look slow.

Durations are a whole chunk's: a layer's head chunks are shorter (`agent.cache.chunks`), so a
head chunk's transfer counts `took / scale` and is late at `scale` times the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

from agent.swarm.ledger import ROOT, Batch, FlightKey, Ledger, Peer

LATE = 2.0  # times the usual transfer duration: a transfer this old is late, a source this slow
WEIGHT = 0.1  # weight of the newest transfer in the moving averages of durations
# Bytes/s a transfer is assumed to run at before one is measured: 25 Mbit/s. A copy from the
# root to a 2 Mbit/s straggler lags after 2 x 0.34 s per MiB instead of holding the root's
# slot for the whole chunk; links slower than this lose a little at the start (a second
# first copy from the root) until a duration is measured.
ASSUMED_RATE = 3.125e6
# A transfer's progress hook looks again at least this many bytes on, or a quarter of what the
# lead brings if that is more: each look is a read and an event-loop turn of its own.
MIN_LOOK_STEP = 64 * 1024


def expected_transfer(chunk_size: int) -> float:
    """The usual transfer duration a layer's schedule starts from (`expected`)."""
    return chunk_size / ASSUMED_RATE


def moving(average: float, value: float) -> float:
    return value if average < 0 else average + WEIGHT * (value - average)


class Pace:
    """Durations of one layer's transfers and the judgements made from them."""

    def __init__(
        self,
        ledger: Ledger,
        expected: float,
        scale: Callable[[int], float] | None = None,
        least_scale: float = 1.0,
    ) -> None:
        self.expected = expected  # s: the usual duration until one is measured (0: none)
        # A chunk's cut as a share of a whole chunk (ChunkLayout.scale), the least of them.
        self.scale, self.least_scale = scale or (lambda chunk: 1.0), least_scale
        self.typical = -1.0  # moving average of all transfer durations (-1: none yet)
        # Moving average of the root's copies that did not lag (-1: none yet). The root's
        # link is not always wider than the nodes' (the same link, shared by its slots): a
        # root copy is late against the root's own copies, never faster than these.
        self.root_typical = -1.0
        self.now = float("-inf")
        self._judged: dict[int, bool] | None = None  # `slow`'s answers while `settling`
        self._fast: dict[int, list[int]] | None = None  # `fast_holder`'s, by chunk
        self._ledger = ledger
        self._peers = ledger.peers
        self._flights = ledger.flights
        self._holders = ledger.holders

    def tick(self, now: float) -> None:
        if now < self.now:
            raise ValueError(f"time went backwards: {now} after {self.now}")
        self.now = now

    def usual(self) -> float:
        """The usual duration (the measured one, else `expected`; <= 0: none)."""
        return self.typical if self.typical > 0 else self.expected

    def ended(self, key: FlightKey, peer: Peer, took: float, *, lagged: bool) -> None:
        """The transfer `key` to `peer` ended after `took` seconds (`lagged`: it lagged, or
        its receiver is slow)."""
        src, took = key[2], took / self.scale(key[1])
        if src == ROOT or lagged:
            peer.down_pace = moving(peer.down_pace, took)
        if lagged:
            return
        self.typical = moving(self.typical, took)
        if src == ROOT:
            self.root_typical = moving(self.root_typical, took)
        else:
            self.clock(src, took)

    def cut(self, key: FlightKey, peer: Peer | None, took: float, *, lagged: bool) -> None:
        """The transfer `key` to `peer` was cut after `took` seconds (timed out, or lost to
        another copy): at least that long, for the receiver (a copy from the root) and, unless
        the receiver is to blame (`lagged`), for the source. A chunk slower than the transfer
        timeout never completes: this is how such a receiver is known."""
        src, took = key[2], took / self.scale(key[1])
        if (src == ROOT or lagged) and peer is not None:
            peer.down_pace = moving(peer.down_pace, took)
        if not lagged and src != ROOT:
            self.clock(src, took)

    def clock(self, source: int, took: float) -> None:
        """Count an upload's duration (or a lower bound, for one cut short) in its pace."""
        peer = self._peers.get(source)
        if peer is not None:
            peer.pace = moving(peer.pace, took)
            proven = not self.slow(peer)
            if proven != peer.proven:
                self._ledger.set_depth(peer, peer.depth, proven)

    def settling(self, on: bool) -> None:
        """From `settling(True)` to `settling(False)` `slow` and `fast_holder` answer from what
        they worked out the first time: the schedule's matching only assigns (no holding, pace
        or lag changes), and a transfer issued now is late for nobody, so no answer changes
        meanwhile. (With 200 agents the matching asked for every holder of every candidate
        chunk: `slow` and `fast_holder` were 70 % of a root's CPU, bench/rootload.py.)"""
        self._judged = {} if on else None
        self._fast = {} if on else None

    def slow(self, peer: Peer) -> bool:
        """A peer whose uploads take LATE times the usual duration or longer (its pace, or an
        upload running that long)."""
        judged = self._judged
        if judged is not None:
            known = judged.get(peer.ident)
            if known is not None:
                return known
        if self.typical <= 0:
            return False
        limit = LATE * self.typical
        if peer.pace > limit:
            answer = True
        else:
            flights, now, lagging, scale = self._flights, self.now, self._ledger.lagging, self.scale
            answer = any(
                flights[k].issued < now - limit * scale(k[1]) and k not in lagging
                for k in peer.outgoing
            )
        if judged is not None:
            judged[peer.ident] = answer
        return answer

    def slow_receiver(self, peer: Peer) -> bool:
        """A peer whose downloads lag, whose copies from the root (or, once it is known slow,
        from anyone) take LATE times the usual duration, or whose copies from two sources
        both run that long (two sources slow at once: its own link): a copy sent there
        spreads slowly."""
        if peer.lagging:
            return True
        if self.typical <= 0:
            return False
        limit = LATE * self.typical
        if peer.down_pace > limit:
            return True
        if sum(len(sources) for sources in peer.incoming.values()) < 2:
            return False  # fewer than two copies in flight
        now, flights, scale = self.now, self._flights, self.scale
        late = {
            src
            for chunk, sources in peer.incoming.items()
            for src in sources
            if flights[(peer.ident, chunk, src)].issued < now - limit * scale(chunk)
        }
        return len(late) >= 2

    def sluggish(self, peer: Peer) -> bool:
        return self.slow(peer) or self.slow_receiver(peer)

    def fast_holder(self, chunk: int, besides: int, avoid: set[int] | None = None) -> bool:
        """Whether a peer other than `besides` (and not in `avoid`: the holders a receiver
        takes nothing from), and not slow, holds `chunk` (busy or not)."""
        peers, fast = self._peers, self._fast
        if avoid or fast is None:
            return any(
                h != besides and not (avoid and h in avoid) and not self.slow(peers[h])
                for h in self._holders[chunk]
            )
        # While settling, holdings stand still too: two fast holders answer for any `besides`.
        found = fast.get(chunk)
        if found is None:
            holders = (h for h in self._holders[chunk] if not self.slow(peers[h]))
            found = fast[chunk] = list(islice(holders, 2))
        return any(h != besides for h in found)

    def time_out(self, limit: float, now: float, batch: Batch) -> None:
        """Cancel the transfers issued at `limit` or earlier (into `batch`): each node avoids
        the source that timed out, and the chunk may come from another holder."""
        ledger, peers = self._ledger, self._peers
        while self._flights:
            key, a = next(iter(self._flights.items()))
            if a.issued > limit:
                return
            node, _, src = key
            receiver = peers.get(node)
            slow = receiver is not None and self.slow_receiver(receiver)
            lagged = key in ledger.lagging or slow
            batch.cancelled.append(ledger.release(key, batch))
            self.cut(key, receiver, now - a.issued, lagged=lagged)
            if src != ROOT and src in peers and node in peers:
                ledger.avoid(peers[node], src)

    def look_at_late(self, now: float, waiting: bool, batch: Batch) -> None:
        """Late transfers: their nodes, if they have demand to spare, may get a second source
        (`dirty`); a source whose upload turned LATE is slow now, and the root may send the
        chunks only slow peers hold to the nodes `waiting` for them (`freed`: no event would
        say so)."""
        typical, scale, peers = self.typical, self.scale, self._peers
        if typical <= 0:
            return
        for (node, chunk, src), a in self._flights.items():  # oldest first
            if a.issued > now - typical * self.least_scale:
                return
            peer = peers.get(node)
            if peer is not None and peer.demand > 0:
                batch.dirty.add(node)
            if waiting and src != ROOT and a.issued <= now - LATE * typical * scale(chunk):
                batch.freed.add(ROOT)

    def lag_root_copies(self, now: float, root_slots: int, batch: Batch) -> None:
        """A copy from the root running LATE times the usual duration (the root's copies', if
        longer) has a slow receiver: it stops holding the root's slot, and its chunk may go to
        another node too. At most `root_slots` copies lag at once: with every link slower than
        expected the root's link is shared by twice its slots, not more."""
        usual = max(self.usual(), self.root_typical)
        if usual <= 0:
            return
        ledger, scale = self._ledger, self.scale
        for key, a in self._flights.items():  # oldest first
            if a.issued > now - LATE * usual * self.least_scale:
                return
            if ledger.root_lagging >= root_slots:
                return
            if key[2] == ROOT and a.issued <= now - LATE * usual * scale(key[1]):
                ledger.lag(key, batch)


def finishing_look(length: int, filled: int, elapsed: float, lead: float) -> int | None:
    """Where a transfer `filled` bytes into a chunk of `length`, `elapsed` seconds after its
    request, should look again; None once the rest needs less than `lead` seconds at the rate
    so far (first-byte wait included: a slow first byte makes it a little late), and the
    transfer is `finishing`.

    The next look is where the rest will need `lead` at that rate; one closer than a step
    (MIN_LOOK_STEP, or a quarter of the lead's bytes) counts as now, so `finishing` errs early
    by a step at most: its transfer's slot frees that much before the end and the next one
    overlaps it. Without the step the hook walked into a crawl: with the bytes already
    waiting, a look a few bytes on comes back at once, the rate so far is a little lower by
    then (the turn took time, not bytes), so the point moves a few bytes on again: 1,700
    reads of 2-13 bytes in 6 s on one agent, each an event-loop turn.
    """
    if elapsed <= 0 or filled >= length:
        return None
    in_lead = int(lead * filled / elapsed)  # bytes the rate so far brings in `lead` seconds
    if length - filled <= in_lead + max(MIN_LOOK_STEP, in_lead // 4):
        return None
    return length - in_lead
