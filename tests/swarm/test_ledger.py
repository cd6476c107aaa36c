"""Tests for agent/swarm/ledger.py: the schedule's facts and the indexes kept over them.

The decisions are tested through `LayerSchedule` (test_schedule.py); here each change of fact
is checked by hand, and a hypothesis state machine makes arbitrary allowed changes and checks
that every index still says what the facts say.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.swarm import ledger as ledger_module
from agent.swarm.ledger import ROOT, Batch, Ledger, Peer

ROOT_NAME = "root"


def ledger(chunks: int = 4, slots: int = 1) -> Ledger:
    return Ledger(chunk_count=chunks, root=ROOT_NAME, upload_slots=slots)


def consistent(led: Ledger) -> None:
    """Every index agrees with the facts it is built from: holdings and transfers in flight."""
    assert all(led.ids[name] == ident for ident, name in led.names.items())
    live = led.peers
    for c in range(led.chunk_count):
        expected = {i for i, p in live.items() if p.held[c] and not p.banned}
        assert led.holders[c] == expected, c
    # A lagging flight holds its receiver's slot only (and its chunk may go from the root
    # again); a vouched chunk (its transfer said `finishing`) is held.
    assert led.lagging <= set(led.flights)
    downloads = list(led.flights)
    uploads = [key for key in downloads if key not in led.lagging]
    for ident, p in live.items():
        assert p.banned == (ident in led.banned)
        assert p.have == sum(p.held)
        assert all(p.held[c] for c in p.vouched)
        # the first chunk it lacks and still wants (its readers are past the ones before)
        want = range(p.past, led.chunk_count)
        assert p.first == next((c for c in want if not p.held[c]), len(p.held))
        out = {key for key in led.flights if key[2] == ident}
        assert p.outgoing == out and p.uploads == sum(1 for key in uploads if key[2] == ident)
        incoming: dict[int, list[int]] = {}
        for node, chunk, src in downloads:
            if node == ident:
                incoming.setdefault(chunk, []).append(src)
        assert p.incoming == incoming
        assert p.from_root == sum(1 for node, _, src in downloads if node == ident and src == ROOT)
        assert p.lagging == sum(1 for key in led.lagging if key[0] == ident)
    assert led.free == {i for i, p in live.items() if not p.banned and p.uploads < led.slots(p)}
    depths = Counter(p.depth for p in live.values() if p.first < led.chunk_count)  # downloading
    assert {d: n for d, n in led.depths.items() if n} == depths
    assert led.root_uploads == sum(1 for key in uploads if key[2] == ROOT)
    assert led.root_lagging == sum(1 for key in led.lagging if key[2] == ROOT)
    sending = sorted(
        c for key in led.flights if key[2] == ROOT and key not in led.lagging for c in [key[1]]
    )
    assert [c for c in range(led.chunk_count) if led.root_sending[c]] == sending
    assert led.avoiders == sum(1 for p in live.values() if p.avoid)
    for (node, chunk, src), a in led.flights.items():
        assert node in live and (src == ROOT or src in live)
        assert (a.node, a.chunk, a.source) == (led.names[node], chunk, led.names[src])


# --------------------------------------------------------------------------------------------
# Each change, by hand


def test_a_node_joins_with_nothing_and_a_free_slot() -> None:
    led = ledger()
    a = led.peer("a")
    assert led.peer("a") is a and a.ident != ROOT
    assert a.have == 0 and a.first == 0 and led.free == {a.ident}
    consistent(led)


@pytest.mark.parametrize("name", [ROOT_NAME, ""])
def test_the_root_and_nameless_nodes_are_not_peers(name: str) -> None:
    with pytest.raises(ValueError):
        ledger().peer(name)


def test_a_holding_lists_the_holder_and_moves_its_first_missing() -> None:
    led, batch = ledger(), Batch()
    a = led.peer("a")
    led.add_holding(a, 1, batch)
    assert a.first == 0 and led.holders[1] == {a.ident}
    led.add_holding(a, 0, batch)
    assert a.first == 2
    assert batch.freed == {a.ident} and batch.dirty == {a.ident}
    consistent(led)


def test_an_assignment_takes_the_last_slot_and_its_release_frees_it() -> None:
    led, batch = ledger(slots=1), Batch()
    a, b = led.peer("a"), led.peer("b")
    led.add_holding(a, 0, batch)
    led.assign(b, 0, a.ident, 1.5, batch)
    (got,) = batch.assigned
    assert (got.node, got.chunk, got.source, got.issued) == ("b", 0, "a", 1.5)
    assert a.ident not in led.free and b.demand == -1  # the schedule checks demand first
    consistent(led)
    batch = Batch()
    assert led.release((b.ident, 0, a.ident), batch) == got
    assert led.free == {a.ident, b.ident} and batch.freed == {a.ident}
    consistent(led)


def test_the_root_sends_one_copy_of_a_chunk() -> None:
    led, batch = ledger(), Batch()
    a = led.peer("a")
    led.assign(a, 2, ROOT, 0.0, batch)
    assert led.root_uploads == 1 and led.root_sending[2] and a.from_root == 1
    consistent(led)
    led.release((a.ident, 2, ROOT), batch)
    assert led.root_uploads == 0 and not led.root_sending[2] and a.root_copies == 1
    consistent(led)


def test_a_lagging_root_copy_frees_the_roots_slot_and_its_chunk_may_go_again() -> None:
    led, batch = ledger(), Batch()
    slow, fast = led.peer("slow"), led.peer("fast")
    led.assign(slow, 2, ROOT, 0.0, batch)
    batch = Batch()
    assert led.lag((slow.ident, 2, ROOT), batch)
    assert not led.lag((slow.ident, 2, ROOT), batch)  # once
    assert led.root_uploads == 0 and not led.root_sending[2] and ROOT in batch.freed
    assert slow.lagging == 1 and slow.incoming == {2: [ROOT]}  # still its download
    consistent(led)
    led.assign(fast, 2, ROOT, 1.0, Batch())
    led.release((slow.ident, 2, ROOT), Batch())  # the slow copy ends: the fast one goes on
    assert led.root_uploads == 1 and led.root_sending[2] and slow.lagging == 0
    consistent(led)
    led.release((fast.ident, 2, ROOT), Batch())
    assert led.root_uploads == 0 and not led.root_sending[2]
    consistent(led)


def test_told_holdings_replace_known_ones() -> None:
    led, batch = ledger(), Batch()
    a = led.peer("a")
    for c in (0, 1, 2):
        led.add_holding(a, c, batch)
    batch = Batch()
    led.replace_holdings(a, [0, 3], batch)  # 1 and 2 were evicted from its cache
    assert a.first == 1 and a.have == 2 and led.holders[1] == set() and ROOT in batch.freed
    consistent(led)
    with pytest.raises(ValueError):
        led.replace_holdings(a, [4], Batch())


def test_a_ban_cancels_uploads_and_outlives_leaving() -> None:
    led, batch = ledger(slots=2), Batch()
    liar, b, c = led.peer("liar"), led.peer("b"), led.peer("c")
    led.add_holding(liar, 0, batch)
    led.assign(b, 0, liar.ident, 0.0, batch)
    led.assign(c, 0, liar.ident, 0.0, batch)
    batch = Batch()
    led.ban(liar, batch)
    assert sorted(a.node for a in batch.cancelled) == ["b", "c"]
    assert led.holders[0] == set() and liar.ident not in led.free | batch.freed
    consistent(led)
    led.remove(liar, Batch())
    again = led.peer("liar")
    assert again.banned and again.ident not in led.free
    consistent(led)


def test_leaving_cancels_both_ways_and_nobody_avoids_the_gone() -> None:
    led, batch = ledger(), Batch()
    a, b, c = led.peer("a"), led.peer("b"), led.peer("c")
    led.add_holding(a, 0, batch)
    led.add_holding(b, 1, batch)
    led.assign(b, 0, a.ident, 0.0, batch)  # a uploads to b
    led.assign(a, 1, b.ident, 0.0, batch)  # b uploads to a
    led.avoid(c, a.ident)
    led.avoid(a, c.ident)
    assert led.avoiders == 2
    batch = Batch()
    led.remove(a, batch)
    assert len(batch.cancelled) == 2 and a.ident not in led.peers
    assert not c.avoid and led.avoiders == 0 and a.ident not in batch.dirty | batch.freed
    consistent(led)


# --------------------------------------------------------------------------------------------
# Arbitrary allowed changes: the indexes always agree with the facts


NODES = ("n0", "n1", "n2", "n3")


class LedgerMachine(RuleBasedStateMachine):
    """Makes the changes the schedule may make (a source holds the chunk and has a free slot,
    the root sends one copy of a chunk at a time, unless an earlier one lags; transfers begin
    finishing or lag) and checks every index after each."""

    @initialize(chunks=st.integers(1, 5), slots=st.integers(1, 3))
    def setup(self, chunks: int, slots: int) -> None:
        self.led = ledger(chunks, slots)
        self.now = 0.0

    def live(self, node: str) -> Peer | None:
        ident = self.led.ids.get(node)
        return self.led.peers.get(ident) if ident is not None else None

    @rule(node=st.sampled_from(NODES), chunk=st.integers(0, 4))
    def hold(self, node: str, chunk: int) -> None:
        p = self.led.peer(node)
        if chunk < self.led.chunk_count and not p.held[chunk]:
            self.led.add_holding(p, chunk, Batch())

    @rule(node=st.sampled_from(NODES), have=st.sets(st.integers(0, 4)))
    def tell(self, node: str, have: set[int]) -> None:
        chunks = sorted(c for c in have if c < self.led.chunk_count)
        self.led.replace_holdings(self.led.peer(node), chunks, Batch())

    @rule(
        node=st.sampled_from(NODES),
        source=st.sampled_from((ROOT_NAME, *NODES)),
        pick=st.integers(0, 4),
    )
    def assign(self, node: str, source: str, pick: int) -> None:
        led, p = self.led, self.led.peer(node)
        chunk = pick % led.chunk_count
        if source == ROOT_NAME:
            if led.root_sending[chunk]:
                return
            src = ROOT
        else:
            s = self.live(source)
            if s is None or s is p or s.ident not in led.free or not s.held[chunk]:
                return
            src = s.ident
        if (p.ident, chunk, src) not in led.flights:
            self.now += 0.25
            led.assign(p, chunk, src, self.now, Batch())

    @rule(pick=st.integers(0, 50))
    def release(self, pick: int) -> None:
        keys = list(self.led.flights)
        if keys:
            self.led.release(keys[pick % len(keys)], Batch())

    @rule(pick=st.integers(0, 50))
    def lag(self, pick: int) -> None:
        keys = list(self.led.flights)
        if keys:
            self.led.lag(keys[pick % len(keys)], Batch())

    @rule(node=st.sampled_from(NODES), source=st.sampled_from(NODES))
    def avoid(self, node: str, source: str) -> None:
        p, s = self.live(node), self.live(source)
        if p is not None and s is not None and p is not s:
            self.led.avoid(p, s.ident)

    @rule(node=st.sampled_from(NODES))
    def ban(self, node: str) -> None:
        p = self.live(node)
        if p is not None:
            self.led.ban(p, Batch())

    @rule(node=st.sampled_from(NODES))
    def remove(self, node: str) -> None:
        p = self.live(node)
        if p is not None:
            self.led.remove(p, Batch())

    @rule(node=st.sampled_from(NODES), depth=st.integers(1, 4), proven=st.booleans())
    def deepen(self, node: str, depth: int, proven: bool) -> None:
        p = self.live(node)
        if p is not None:
            self.led.set_depth(p, depth, proven)

    @rule(node=st.sampled_from(NODES), past=st.integers(0, 5))
    def move_past(self, node: str, past: int) -> None:
        """Its readers are past chunks below `past` (a cache window)."""
        p = self.live(node)
        if p is not None:
            self.led.set_past(p, past, Batch())

    @invariant()
    def indexes_agree(self) -> None:
        if hasattr(self, "led"):
            consistent(self.led)


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_node_that_has_every_chunk_no_longer_counts_for_the_roots_first_copies() -> None:
    """The root's link sends as many first copies at once as the deepest node still
    downloading keeps; a deep node that finished (or whose readers are past every chunk it
    lacks) no longer counts, and counts again once it lacks a chunk it wants."""
    led = Ledger(chunk_count=2, root="r", upload_slots=1)
    deep, shallow = led.peer("deep"), led.peer("shallow")
    led.set_depth(deep, 3, True)
    assert led.deepest == 3
    led.add_holding(deep, 0, Batch())
    assert led.deepest == 3
    led.add_holding(deep, 1, Batch())
    assert led.deepest == 1  # done: its depth asks nothing of the root any more
    led.set_depth(deep, 4, True)
    assert led.deepest == 1
    led.lose_holding(deep, 1, Batch())  # evicted: it wants chunk 1 again
    assert led.deepest == 4
    led.set_past(deep, 2, Batch())  # its readers are past the layer
    assert led.deepest == 1
    led.remove(deep, Batch())
    led.set_depth(shallow, 2, True)
    assert led.deepest == 2 and {d: n for d, n in led.depths.items() if n} == {2: 1}


def test_transfers_cancelled_by_their_sources_departure_are_remembered_once_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The evidence a later bad-data report needs: asked once, and bounded."""
    monkeypatch.setattr(ledger_module, "LEFT_FLIGHTS", 2)
    led = Ledger(chunk_count=4, root="r", upload_slots=4)
    src, a = led.peer("src"), led.peer("a")
    for c in range(3):
        led.add_holding(src, c, Batch())
        led.assign(a, c, src.ident, 0.0, Batch())
    led.remove(src, Batch())
    remembered = [c for c in range(3) if led.left_with(a, c, src.ident)]
    assert len(remembered) == 2  # the bound
    assert not any(led.left_with(a, c, src.ident) for c in range(3))  # once each


def test_a_stale_peer_object_changes_nothing() -> None:
    """The depth of a peer that left (an object kept from before) is not booked."""
    led = Ledger(chunk_count=2, root="r", upload_slots=1)
    a = led.peer("a")
    led.remove(a, Batch())
    led.set_depth(a, 3, True)
    assert led.deepest == 1 and led.depths[3] == 0
    b = led.peer("a")  # back, a new object
    led.set_depth(a, 3, True)
    assert b.depth == 1 and led.deepest == 1
