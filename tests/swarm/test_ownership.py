"""Which root schedules a layer: rendezvous order (pinned: every node of every version must
agree) and a busy root's handoffs, without sockets."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.swarm.ownership import (
    HANDOFF_MIN_CHUNKS,
    Fetching,
    Handoffs,
    busy_with,
    placement,
    rendezvous_order,
    rendezvous_score,
)
from tests.swarm.test_protocol import DIGEST, digests, nodes

# --------------------------------------------------------------------------------------------
# Ownership: rendezvous hashing

ROOTS = ["10.0.0.11:65002", "10.0.0.12:65002", "10.0.0.13:65002"]


def test_rendezvous_is_pinned() -> None:
    # Every node, whatever its version, must agree on owners: these values never change.
    assert rendezvous_score(DIGEST, ROOTS[0]) == 0xC26CCC08BFE3B71D
    assert rendezvous_order(DIGEST, ROOTS) == [ROOTS[1], ROOTS[0], ROOTS[2]]


@given(digests, st.lists(nodes, max_size=8), st.randoms())
def test_rendezvous_is_stable(digest: str, roots: list[str], rnd: random.Random) -> None:
    order = rendezvous_order(digest, roots)
    assert sorted(order) == sorted(set(roots))
    shuffled = roots + roots[:2]  # order and duplicates of the input do not matter
    rnd.shuffle(shuffled)
    assert rendezvous_order(digest, shuffled) == order
    scores = [rendezvous_score(digest, r) for r in order]
    assert scores == sorted(scores, reverse=True)


def random_digests(n: int) -> list[str]:
    rnd = random.Random(4)
    return [f"sha256:{rnd.getrandbits(256):064x}" for _ in range(n)]


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_each_root_owns_its_share(count: int) -> None:
    roots = [f"10.0.0.{10 + i}:65002" for i in range(count)]
    owners = [rendezvous_order(d, roots)[0] for d in random_digests(10_000)]
    expected = 10_000 / count
    for root in roots:
        # Binomial standard deviation is at most 50 here; 15 % is more than 4 of them.
        assert abs(owners.count(root) - expected) < 0.15 * expected, (root, owners.count(root))


def test_removing_a_root_moves_only_its_layers() -> None:
    roots = [f"10.0.0.{10 + i}:65002" for i in range(5)]
    gone = roots[2]
    rest = [r for r in roots if r != gone]
    moved_to: dict[str, int] = {}
    for digest in random_digests(10_000):
        before = rendezvous_order(digest, roots)
        after = rendezvous_order(digest, rest)
        assert after == [r for r in before if r != gone]  # the order among survivors holds
        if before[0] == gone:
            moved_to[after[0]] = moved_to.get(after[0], 0) + 1
        else:
            assert after[0] == before[0]
    # The dead root's layers spread over all survivors, not onto one neighbour.
    assert set(moved_to) == set(rest)
    assert min(moved_to.values()) > 0.15 * sum(moved_to.values())


def test_empty_root_set() -> None:
    assert rendezvous_order(DIGEST, []) == []


# --------------------------------------------------------------------------------------------
# Handoffs: a root fetching one big layer from the origin hands the next one to the next root

ME, NEXT = ROOTS[0], ROOTS[1]
OTHER = "sha256:" + "b" * 64
BIG = Fetching(OTHER, HANDOFF_MIN_CHUNKS)


def decide(handoffs: Handoffs, **kw: object) -> str | None:
    args: dict = {"me": ME, "order": [ME, NEXT], "held": False, "fetching": [BIG], "now": 0.0}
    args.update(kw)
    return handoffs.decide(DIGEST, **args)


def test_a_root_fetching_a_big_layer_hands_the_next_to_the_next_root_and_says_so_again() -> None:
    handoffs = Handoffs()
    assert decide(handoffs) == NEXT
    # Every later asker hears the same, even once the busy layer is in: one decision per layer.
    assert handoffs.target(DIGEST, now=5.0) == NEXT
    assert handoffs.target(OTHER, now=5.0) is None
    assert handoffs.state() == {DIGEST: NEXT}


@pytest.mark.parametrize(
    "why, kw",
    [
        ("idle", {"fetching": []}),
        ("only this very layer in flight", {"fetching": [Fetching(DIGEST, 100)]}),
        ("a config blob is no load", {"fetching": [Fetching(OTHER, HANDOFF_MIN_CHUNKS - 1)]}),
        ("size not known yet", {"fetching": [Fetching(OTHER, None)]}),
        ("held here: handing off would cost the origin", {"held": True}),
        ("no other root", {"order": [ME]}),
        ("asked on a failover: not first here", {"order": [NEXT, ME]}),
    ],
)
def test_a_root_keeps_a_layer(why: str, kw: dict) -> None:
    handoffs = Handoffs()
    assert decide(handoffs, **kw) is None, why
    assert len(handoffs) == 0  # nothing recorded: the next asker is decided afresh


def test_a_handoff_is_forgotten_once_nobody_asked_for_a_while() -> None:
    handoffs = Handoffs(forget_after=10.0)
    decide(handoffs)
    assert handoffs.target(DIGEST, now=9.0) == NEXT  # refreshed
    assert handoffs.target(DIGEST, now=18.0) == NEXT
    assert handoffs.target(DIGEST, now=28.5) is None
    assert len(handoffs) == 0


def test_the_oldest_handoff_goes_when_the_records_are_full() -> None:
    handoffs = Handoffs(limit=3)
    digests = [f"sha256:{i:064x}" for i in range(5)]
    for d in digests:
        assert handoffs.decide(d, me=ME, order=[ME, NEXT], held=False, fetching=[BIG], now=0.0)
    assert len(handoffs) == 3
    assert [handoffs.target(d, now=1.0) for d in digests] == [None, None, NEXT, NEXT, NEXT]


def test_busy_with_names_the_big_layer_in_flight() -> None:
    assert busy_with([Fetching(OTHER, 1), BIG], DIGEST) == OTHER
    assert busy_with([Fetching(DIGEST, 50)], DIGEST) is None


def test_placement_puts_a_busy_roots_next_big_layer_on_its_next_root() -> None:
    roots = ROOTS[:2]
    same = [d for d in random_digests(50) if rendezvous_order(d, roots)[0] == roots[0]][:3]
    assert placement([(same[0], 4), (same[1], 4)], roots) == [roots[0], roots[1]]
    # A small blob first keeps its root free for the big one; a third goes on (one handoff).
    assert placement([(same[0], 1), (same[1], 4), (same[2], 4)], roots) == [roots[0]] * 2 + [
        roots[1]
    ]
    assert placement([(same[0], 4), (same[1], 4)], roots[:1]) == [roots[0]] * 2


def test_a_handoff_outlives_the_pull_so_a_later_pull_finds_the_layer_where_it_went() -> None:
    """The next root keeps the layer; a pull a day later that this root kept for itself would
    have it fetch the layer from the origin a second time."""
    handoffs = Handoffs()
    decide(handoffs)
    assert handoffs.target(DIGEST, now=24 * 3600.0) == NEXT


def test_records_read_back_as_written_and_anything_else_is_refused() -> None:
    handoffs = Handoffs()
    decide(handoffs)
    again = Handoffs(limit=5)
    assert again.restore(handoffs.dump(), now=100.0) == 1
    assert again.target(DIGEST, now=100.0 + 3600) == NEXT
    for bad, why in [
        (b"[1]", "JSON object"),
        (b"{", "not JSON"),
        (b'{"sha256:xyz": "10.0.0.1:1"}', "digest"),
        (b'{"%s": "no-port"}' % DIGEST.encode(), "port"),
        (b'{"%s": 7}' % DIGEST.encode(), "string"),
    ]:
        with pytest.raises(ValueError, match=why):
            Handoffs().restore(bad, now=0.0)
    many = {f"sha256:{i:064x}": NEXT for i in range(9)}
    assert again.restore(json.dumps(many).encode(), now=0.0) == 5  # the newest are kept
    assert again.target(f"sha256:{8:064x}", now=1.0) == NEXT
    assert again.target(DIGEST, now=1.0) is None
