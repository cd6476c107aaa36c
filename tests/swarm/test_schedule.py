"""Tests for agent/swarm/schedule.py: the per-layer chunk schedule, by hand, by hypothesis,
by simulation.

Pure: events in, `Actions` out, time passed as `now`. The simulations (`agent.sim`)
drive the same object with virtual links and check every assignment against the simulated truth.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.sim.engine import simulate
from agent.sim.model import Mbit, MiB, SwarmConfig, bench_case
from agent.swarm.ledger import ROOT as ROOT_ID
from agent.swarm.ledger import Batch, Ledger
from agent.swarm.pace import Pace
from agent.swarm.schedule import Actions, Assignment, LayerSchedule
from tests.swarm.test_ledger import consistent

ROOT = "root"


def triples(actions: Actions) -> list[tuple[str, int, str]]:
    return [(a.node, a.chunk, a.source) for a in actions.assigned]


def cancelled(actions: Actions) -> list[tuple[str, int, str]]:
    return [(a.node, a.chunk, a.source) for a in actions.cancelled]


def schedule(chunks: int, **kw: object) -> LayerSchedule:
    return LayerSchedule(chunk_count=chunks, root=ROOT, **kw)  # type: ignore[arg-type]


def uploading(s: LayerSchedule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in s.in_flight():
        counts[a.source] = counts.get(a.source, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# Striping: the root's link carries each chunk once, first copies land on different nodes


def test_first_copies_go_to_different_nodes() -> None:
    s = schedule(8, root_upload_slots=4)
    s.origin_progress(4, now=0)
    got = []
    for node in ("a", "b", "c", "d"):
        got += triples(s.request(node, want=2, now=0))
    assert sorted(got) == [("a", 0, ROOT), ("b", 1, ROOT), ("c", 2, ROOT), ("d", 3, ROOT)]


def test_first_copies_striped_when_chunks_land_later() -> None:
    s = schedule(8, root_upload_slots=4)
    for node in ("a", "b", "c", "d"):
        assert not s.request(node, want=2, now=0)  # nothing at the root yet: they wait
    got = triples(s.origin_progress(4, now=0.1))
    assert sorted(got) == [("a", 0, ROOT), ("b", 1, ROOT), ("c", 2, ROOT), ("d", 3, ROOT)]


def test_root_hands_a_root_only_chunk_to_one_node_at_a_time() -> None:
    s = schedule(1, root_upload_slots=3)
    s.origin_progress(1, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, ROOT)]
    assert not s.request("b", want=1, now=0)  # the root has slots, but a's copy is coming
    # When a has it, b gets it from a, pushed with a's completion.
    assert triples(s.completed("a", 0, ROOT, now=1)) == [("b", 0, "a")]


def test_next_root_copy_goes_to_the_node_with_fewest() -> None:
    s = schedule(4)
    s.origin_progress(4, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, ROOT)]
    assert not s.request("b", want=1, now=0)
    # a is done and asks first, but b waited and has had nothing from the root.
    out = triples(s.completed("a", 0, ROOT, now=1)) + triples(s.request("a", want=1, now=1))
    assert ("b", 1, ROOT) in out
    assert ("a", 1, ROOT) not in out
    assert s.progress()["root"] == {"uploading": 1, "uploaded": 1}


def test_root_does_not_send_what_a_peer_holds() -> None:
    s = schedule(2)
    s.origin_progress(2, now=0)
    s.request("a", have=[0], want=0, now=0)
    # b lacks 0 and 1; the root is idle: it sends 1 (root-only), and 0 comes from a.
    assert triples(s.request("b", want=1, now=0)) == [("b", 1, ROOT)]
    assert triples(s.request("c", want=1, now=0)) == [("c", 0, "a")]


# --------------------------------------------------------------------------------------------
# Window and order


def test_lowest_missing_chunk_first() -> None:
    s = schedule(6)
    s.request("p", have=range(6), want=0, now=0)
    assert triples(s.request("n", have=[0, 2], want=1, now=0)) == [("n", 1, "p")]


def test_window_bounds_what_a_node_is_given() -> None:
    s = schedule(10, window=2)
    s.request("p", have=range(2, 10), want=0, now=0)
    assert not s.request("n", want=1, now=0)  # p holds 2..9, outside [0, 2)
    assert triples(s.origin_progress(1, now=1)) == [("n", 0, ROOT)]
    s.completed("n", 0, ROOT, now=2)
    # The window is [1, 3) now: chunk 1 is nowhere yet, chunk 2 is at p.
    assert triples(s.request("n", want=1, now=2)) == [("n", 2, "p")]


def test_one_download_at_a_time() -> None:
    s = schedule(4, upload_slots=2)
    s.request("p", have=range(4), want=0, now=0)
    s.request("q", have=range(4), want=0, now=0)
    assert triples(s.request("n", want=3, now=0)) == [("n", 0, "p")]
    assert s.progress()["nodes"]["n"]["demand"] == 2  # kept for a second source, if late


# --------------------------------------------------------------------------------------------
# Pipelining and cut-through: a transfer in its last bytes counts as done


def test_a_finishing_transfer_frees_the_roots_slot_for_the_next_first_copy() -> None:
    s = schedule(4)
    s.origin_progress(4, now=0)
    assert triples(s.request("a", want=2, now=0)) == [("a", 0, ROOT)]
    assert not s.request("b", want=2, now=0)  # the root's one slot is busy
    assert triples(s.finishing("a", 0, ROOT, now=0.1)) == [("b", 1, ROOT)]
    assert s.holds("a", 0) and not s.flying("a", 0, ROOT)  # done, as far as the root goes
    assert triples(s.completed("a", 0, ROOT, now=0.2)) == []  # a `done` after it: nothing
    assert s.progress()["root"]["uploading"] == 1  # b's transfer only: not freed twice


def test_a_finishing_receiver_is_a_source_of_the_chunk_at_once() -> None:
    """Cut-through: the chunk's next hop starts as this one ends (the receiver's P2P port
    holds the request until the bytes land), instead of a report round trip and a store
    later."""
    s = schedule(4)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("b", want=2, now=0)) == [("b", 0, "a")]
    assert triples(s.request("c", want=2, now=0)) == []  # a's one slot is busy
    a_done = triples(s.finishing("b", 0, "a", now=0.1))
    assert sorted(a_done) == [("c", 0, "a")] or sorted(a_done) == [("c", 0, "b")]
    assert s.holds("b", 0)
    s.request("d", want=2, now=0.1)
    assert ("d", 0, "b") in [(a.node, a.chunk, a.source) for a in s.in_flight()]


def test_a_transfer_that_fails_after_finishing_takes_the_holding_back() -> None:
    s = schedule(4)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("b", want=2, now=0)) == [("b", 0, "a")]
    s.finishing("b", 0, "a", now=0.1)
    assert s.holds("b", 0)
    assert not s.finishing("b", 0, "a", now=0.1)  # said once is enough
    s.failed("b", 0, "a", bad_data=False, now=0.2)  # it failed after all: b wants chunk 0 again
    assert not s.holds("b", 0) and s.progress()["nodes"]["b"]["first_missing"] == 0
    assert triples(s.request("d", have=[0], want=0, now=0.3)) == [("b", 0, "d")]


def test_bad_bytes_after_finishing_ban_the_source_and_take_the_holding_back() -> None:
    s = schedule(4)
    s.request("liar", have=[0], want=0, now=0)
    s.request("a", have=[0], want=0, now=0)
    [(_, _, src)] = triples(s.request("b", want=1, now=0))
    s.finishing("b", 0, src, now=0.1)
    s.failed("b", 0, src, bad_data=True, now=0.2)
    assert not s.holds("b", 0) and s.progress()["nodes"][src]["banned"]


def test_a_done_after_finishing_from_another_source_keeps_the_holding() -> None:
    """Only the transfer that said `finishing` vouches for the chunk: a failure of another one
    (an endgame's second source) takes nothing back."""
    s = schedule(3, endgame=3)
    s.request("p", have=[0, 1, 2], want=0, now=0)
    s.request("q", have=[0, 1, 2], want=0, now=0)
    [(_, _, src)] = triples(s.request("n", want=1, now=0))
    s.finishing("n", 0, src, now=0.1)
    other = "q" if src == "p" else "p"
    s.failed("n", 0, other, bad_data=False, now=0.2)  # not a transfer the root knows
    assert s.holds("n", 0)


def test_a_finishing_second_source_wins_and_the_late_one_is_cancelled() -> None:
    """Found by random event sequences (as `tails`): a late chunk with two sources, one of
    them finishing, was given that same source again (the transfer twice in the books)."""
    s = schedule(3, endgame=3)
    s.request("p", have=[0, 1, 2], want=0, now=0)
    s.request("q", have=[0, 1, 2], want=0, now=0)
    first = triples(s.request("n", want=2, now=0))
    assert first == [("n", 0, "p")]
    (chunk1,) = triples(s.completed("n", 0, "p", now=1.0))  # usual duration: 1 s
    assert not s.request("n", want=1, now=1.0)  # its spare slot, for a second source
    second = triples(s.expire(now=2.5))  # chunk 1 is late: a second source
    assert len(second) == 1 and second[0][1] == 1 and second[0][2] != chunk1[2]
    late, extra = chunk1[2], second[0][2]
    done = s.finishing("n", 1, extra, now=2.6)
    assert ("n", 1, late) in cancelled(done)  # the late copy lost: cancelled
    again = triples(s.request("n", want=1, now=2.6))
    assert not [t for t in again if t[1] == 1]  # chunk 1 is n's: not assigned again
    assert not triples(s.completed("n", 1, late, now=2.7))  # the loser's end: nothing
    assert not [a for a in s.in_flight() if a.chunk == 1] and s.holds("n", 1)


def test_finishing_an_unknown_transfer_records_the_chunk() -> None:
    """A straggler's copies outlast the transfer timeout: its `finishing` for a transfer the
    schedule cancelled still brings the chunk, and no `done` follows it (the simulator's
    straggler waited for its first missing chunk for ever)."""
    s = schedule(4)
    s.request("a", have=[0], want=0, now=0)
    assert not s.finishing("b", 0, "a", now=0)
    assert s.holds("b", 0)
    s.failed("b", 0, "a", bad_data=False, now=0.1)  # ... unless it fails after all
    assert not s.holds("b", 0)


def test_a_finishing_that_its_failure_overtook_brings_nothing() -> None:
    """A `finishing` and the `failed` that follows it travel in two plan requests: when the
    failure arrives first, the late `finishing` must not make the node a holder (no report
    would take it back, and the chunk would never be assigned to it again)."""
    s = schedule(4)
    s.request("a", have=[0], want=0, now=0)
    s.request("c", have=[0, 1, 2, 3], want=0, now=0)
    assert triples(s.request("b", want=1, now=0)) == [("b", 0, "a")]
    s.failed("b", 0, "a", bad_data=False, now=0.1)
    s.finishing("b", 0, "a", now=0.1)  # overtaken
    assert not s.holds("b", 0)
    assert triples(s.request("b", want=1, now=0.2)) == [("b", 0, "c")]


def test_a_finishing_from_a_source_a_new_root_never_heard_of_brings_nothing() -> None:
    """After a root change the `finishing` goes again, to a root that may not know its source:
    a `failed` of that transfer could not take the holding back there (the node says `done`
    once the chunk is stored)."""
    s = schedule(4)
    s.origin_progress(4, now=0)
    s.finishing("b", 0, "elsewhere", now=0.1)
    s.failed("b", 0, "elsewhere", bad_data=False, now=0.2)
    assert not s.holds("b", 0)
    assert triples(s.request("b", want=1, now=0.3)) == [("b", 0, ROOT)]


# --------------------------------------------------------------------------------------------
# Sources: slots, load, speed


def test_upload_slots_are_never_exceeded() -> None:
    s = schedule(1, upload_slots=2)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("b", want=1, now=0)) == [("b", 0, "a")]
    assert triples(s.request("c", want=1, now=0)) == [("c", 0, "a")]
    assert not s.request("d", want=1, now=0)  # a is full, the root does not step in
    assert uploading(s) == {"a": 2}
    # b finishes: d gets the chunk from b (idle) rather than from a (one upload left).
    assert triples(s.completed("b", 0, "a", now=1)) == [("d", 0, "b")]
    assert uploading(s) == {"a": 1, "b": 1}


def test_least_loaded_holder_is_the_source() -> None:
    s = schedule(1, upload_slots=3)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    assert triples(s.request("y", want=1, now=0)) == [("y", 0, "a")]
    s.request("b", have=[0], want=0, now=0)  # a has two uploads, b none
    assert triples(s.request("z", want=1, now=0)) == [("z", 0, "b")]
    assert triples(s.request("w", want=1, now=0)) == [("w", 0, "b")]  # 1 upload beats 2
    v = triples(s.request("v", want=1, now=0))
    assert len(v) == 1 and v[0][2] in ("a", "b")
    u = triples(s.request("u", want=1, now=0))
    assert len(u) == 1 and u[0][2] in ("a", "b") and u[0][2] != v[0][2]
    assert uploading(s) == {"a": 3, "b": 3}
    assert not s.request("t", want=1, now=0)  # every slot taken


def test_slow_source_loses_to_a_faster_one() -> None:
    s = schedule(2)
    s.origin_progress(2, now=0)
    s.request("slow", have=[0, 1], want=0, now=0)  # first in line among idle holders
    s.request("fast", have=[0], want=0, now=0)
    s.request("other", have=[0], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "slow")]
    assert triples(s.request("y", want=1, now=0)) == [("y", 0, "fast")]
    assert triples(s.request("z", want=1, now=0)) == [("z", 0, "other")]
    # The usual transfer takes about 1 s; slow took 10.
    s.completed("y", 0, "fast", now=1)
    s.completed("z", 0, "other", now=1)
    s.completed("x", 0, "slow", now=10)
    assert s.progress()["nodes"]["slow"]["uploaded"] == 1
    # Chunk 1 only slow holds: it counts as root-only, and the root sends it.
    assert triples(s.request("v", have=[0], want=1, now=10)) == [("v", 1, ROOT)]
    # slow is idle and first in line for chunk 0, but a faster holder serves it.
    assert triples(s.request("w", have=[1], want=1, now=10)) == [("w", 0, "fast")]


def test_an_upload_running_long_marks_its_source_slow() -> None:
    s = schedule(2)
    s.origin_progress(2, now=0)
    s.request("a", have=[0, 1], want=0, now=0)
    s.request("b", have=[0], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)  # usual: 1 s
    assert triples(s.request("y", have=[0], want=1, now=1)) == [("y", 1, "a")]
    # Five seconds later y's transfer is still running: a is slow, and chunk 1 (held by a
    # alone) is sent by the root to the next node that needs it.
    assert triples(s.request("z", have=[0], want=1, now=6)) == [("z", 1, ROOT)]


# --------------------------------------------------------------------------------------------
# Depth: where a chunk crosses a link faster than a round trip, several at once


def test_a_deep_node_downloads_its_depth_at_once_each_from_another_holder() -> None:
    """A node that asks with depth 3 is given three chunks at once, from three holders; a node
    of depth 1 one at a time (its demand beyond that only brings a second source)."""
    s = schedule(6)
    s.origin_progress(6, now=0)
    for holder in ("h1", "h2", "h3", "h4"):
        s.request(holder, have=range(6), want=0, now=0)
    assert len(triples(s.request("one", want=2, now=0))) == 1
    deep = triples(s.request("deep", want=4, now=0, depth=3))
    assert len(deep) == 3
    assert len({chunk for _, chunk, _ in deep}) == 3 and len({src for *_, src in deep}) == 3
    assert s.progress()["nodes"]["deep"]["downloading"] == 3


def test_a_deep_holder_uploads_its_depth_at_once_once_its_uploads_run_at_the_usual_pace() -> None:
    """A node's depth measures its download link: it serves that many at once only after an
    upload of its showed its upload link keeps the usual pace (a slow upload link given its
    depth held every transfer from it up to the timeout)."""
    s = schedule(4)
    s.origin_progress(4, now=0)
    s.request("deep", have=range(4), want=0, now=0, depth=2)
    got = [triples(s.request(n, want=2, now=0)) for n in ("x", "y", "z")]
    assert [len(g) for g in got] == [1, 0, 0], got  # not proven yet: one at a time
    s.completed("x", got[0][0][1], "deep", now=0.1)
    assert uploading(s).get("deep") == 2, "proven: both its slots serve the waiting nodes"
    s.request("deep", want=0, now=0.2, depth=1)  # it measured its link again: one at a time
    for a in [a for a in s.in_flight() if a.source == "deep"][:1]:
        s.completed(a.node, a.chunk, "deep", now=0.3)
    assert uploading(s).get("deep", 0) <= 1, "a freed slot is not refilled above its depth"


def test_the_roots_link_sends_as_many_first_copies_as_the_deepest_node_keeps() -> None:
    """The root's link is as far from the nodes as theirs are from each other: once a node
    asks with depth 3 the root sends three first copies at once, not `root_upload_slots`."""
    shallow = schedule(4)
    shallow.origin_progress(4, now=0)
    assert [len(triples(shallow.request(n, want=2, now=0))) for n in "xyz"] == [1, 0, 0]
    s = schedule(4)
    s.origin_progress(4, now=0)
    assert len(triples(s.request("deep", want=4, now=0, depth=3))) == 1  # one from the root
    assert [len(triples(s.request(n, want=2, now=0))) for n in "xyz"] == [1, 1, 0]
    assert uploading(s) == {ROOT: 3}


def test_a_deep_nodes_late_last_chunk_gets_a_second_source() -> None:
    """In the endgame a late transfer gets a second source at any depth (a deep node with a
    slot free was offered only chunks not in flight, and waited for the timeout)."""
    s = schedule(2, endgame=1)
    s.request("a", have=[0, 1], want=0, now=0)
    s.request("b", have=[0, 1], want=0, now=0)
    s.request("x", want=1, now=0, depth=2)
    s.completed("x", 0, "a", now=1)
    assert triples(s.request("x", want=3, now=1, depth=2)) == [("x", 1, "a")]
    assert triples(s.expire(now=2.1)) == [("x", 1, "b")]


def test_the_root_never_sends_a_deep_node_a_chunk_already_coming_to_it() -> None:
    s = schedule(2)
    s.origin_progress(1, now=0)
    s.request("S", want=1, now=0)
    s.completed("S", 0, ROOT, now=1)
    assert triples(s.request("P", want=3, now=1, depth=2)) == [("P", 0, "S")]
    assert triples(s.request("X", have=[1], want=0, now=2.5)) == [("P", 1, "X")]
    s.expire(now=3.2)  # chunk 0 from S is late: P waits for a second source of it
    assert ("P", 0, ROOT) not in triples(s.leave("X", now=3.3))


def test_a_deeper_request_uses_the_root_slots_it_opens_at_once() -> None:
    s = schedule(2)
    s.origin_progress(2, now=0)
    assert triples(s.request("a", want=2, now=0)) == [("a", 0, ROOT)]
    assert not s.request("b", want=1, now=0)  # the root's one slot is busy
    assert triples(s.request("a", want=1, now=0.1, depth=2)) == [("b", 1, ROOT)]


def test_depth_one_keeps_the_configured_window() -> None:
    s = schedule(3, window=1)
    s.request("h", have=[1], want=0, now=0)
    assert not s.request("x", want=1, now=0)  # chunk 1 is outside x's window of one


def test_a_depth_outside_the_protocols_range_is_refused() -> None:
    s = schedule(4)
    with pytest.raises(ValueError, match="depth"):
        s.request("a", want=1, now=0, depth=0)
    with pytest.raises(ValueError, match="depth"):
        s.request("a", want=1, now=0, depth=17)


# --------------------------------------------------------------------------------------------
# Faults


def test_a_source_reported_for_bad_data_after_it_left_stays_banned_when_it_comes_back() -> None:
    """The report of its bad bytes can arrive after the source left the layer (the receiver
    checks the chunk once all of it came): the ban holds when it asks again."""
    s = schedule(1)
    s.request("liar", have=[0], want=0, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, "liar")]
    s.leave("liar", now=0.5)
    s.failed("a", 0, "liar", bad_data=True, now=0.6)
    s.request("liar", have=[0], want=0, now=0.7)  # back, still claiming the chunk
    assert s.progress()["nodes"]["liar"]["banned"]
    assert ("b", 0, "liar") not in triples(s.request("b", want=1, now=0.8))


def test_a_bad_data_report_of_a_transfer_never_assigned_bans_nobody() -> None:
    """Only a node given a transfer can have its source banned: any token holder could name
    any node, and an honest holder banned is a source lost for the whole layer."""
    s = schedule(2)
    s.request("honest", have=[0, 1], want=0, now=0)
    s.request("accuser", want=0, now=0)
    s.failed("accuser", 1, "honest", bad_data=True, now=0.1)
    assert not s.progress()["nodes"]["honest"]["banned"]
    assert triples(s.request("x", want=1, now=0.2)) == [("x", 0, "honest")]
    s.failed("x", 0, "honest", bad_data=True, now=0.3)  # given it: believed
    assert s.progress()["nodes"]["honest"]["banned"]


def test_a_root_copy_to_a_slow_receiver_lags_and_its_chunk_goes_to_a_fast_node() -> None:
    """The straggler asked first and got the first copy of chunk 0; it takes far longer than
    expected. At LATE times the expected duration that copy stops holding the root's only
    slot, and chunk 0 goes from the root to the node that waits for it, not a window later."""
    s = schedule(4, expected=1.0)
    s.origin_progress(4, now=0)
    assert triples(s.request("straggler", want=2, now=0)) == [("straggler", 0, ROOT)]
    assert not s.request("fast", want=2, now=0.1)  # the root's one slot is busy
    assert not s.expire(now=1.5)  # late only at LATE x expected
    assert triples(s.expire(now=2.5)) == [("fast", 0, ROOT)]
    # The fast node passes chunk 0 on at once; the next root copy goes to it, not to the
    # straggler, which receives slowly.
    out = triples(s.completed("fast", 0, ROOT, now=2.6))
    assert ("fast", 1, ROOT) in out and all(node != "straggler" for node, _, _ in out)
    assert uploading(s) == {ROOT: 2}  # the lagging copy (not holding the slot) and chunk 1
    # The straggler's copy ends at last: the root's slot count is not touched twice.
    s.completed("straggler", 0, ROOT, now=9.0)
    assert uploading(s) == {ROOT: 1}
    assert s.progress()["root"]["uploading"] == 1


def test_without_any_duration_known_nothing_lags() -> None:
    s = schedule(4)  # no `expected`, nothing measured
    s.origin_progress(4, now=0)
    s.request("straggler", want=2, now=0)
    assert not s.request("fast", want=2, now=0.1)
    assert not s.expire(now=9.0)


def test_a_slow_receivers_downloads_do_not_make_its_source_slow() -> None:
    s = schedule(2, expected=1.0, root_upload_slots=2)
    s.origin_progress(2, now=0)
    s.request("a", want=1, now=0)  # chunk 0 from the root
    s.request("straggler", want=1, now=0)  # chunk 1 from the root
    s.completed("a", 0, ROOT, now=0.5)
    s.request("a", want=1, now=0.5)  # waits for chunk 1, on its way to the straggler
    assert ("a", 1, ROOT) in triples(s.expire(now=2.6))  # the straggler's copy lags
    s.completed("a", 1, ROOT, now=2.8)
    s.completed("straggler", 1, ROOT, now=8.0)
    # The straggler takes chunk 0 from a: slowly, and not a's fault.
    assert ("straggler", 0, "a") in triples(s.request("straggler", want=1, now=8.0))
    s.completed("straggler", 0, "a", now=16.0)
    assert s.progress()["nodes"]["a"]["pace"] is None


def a_known_straggler(chunks: int, **kw: object) -> LayerSchedule:
    """A schedule where a's copy from the root set the usual duration (1 s) and the
    straggler's took 7 s (its copy lagged): the straggler is a slow receiver."""
    s = schedule(chunks, expected=1.0, **kw)
    s.origin_progress(chunks, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, ROOT)]
    s.completed("a", 0, ROOT, now=1.0)
    assert ("straggler", 1, ROOT) in triples(s.request("straggler", want=1, now=1.0))
    s.expire(now=3.5)
    s.completed("straggler", 1, ROOT, now=8.0)
    assert s.progress()["nodes"]["straggler"]["down_pace"] == 7.0
    return s


def test_a_slow_receivers_timed_out_download_does_not_make_its_source_slow() -> None:
    s = a_known_straggler(2, transfer_timeout=10.0)
    assert triples(s.request("straggler", want=1, now=8.0)) == [("straggler", 0, "a")]
    s.expire(now=18.5)  # the straggler's download from a times out: its link, not a's
    assert s.progress()["nodes"]["a"]["pace"] is None


def test_a_cut_copy_counts_against_its_source_unless_its_receiver_is_to_blame() -> None:
    """`Pace.cut` (a timeout, or the loser of two copies): at least that long for the
    source, unless the receiver is slow; for the receiver when the copy came from the root."""
    ledger = Ledger(chunk_count=2, root=ROOT, upload_slots=1)
    pace = Pace(ledger, expected=1.0)
    a, straggler = ledger.peer("a"), ledger.peer("straggler")
    pace.cut((straggler.ident, 0, a.ident), straggler, 9.0, lagged=False)
    assert a.pace == 9.0 and straggler.down_pace < 0  # a peer's copy: the source's time
    pace.cut((straggler.ident, 0, a.ident), straggler, 20.0, lagged=True)
    assert a.pace == 9.0 and straggler.down_pace == 20.0  # the receiver's, once to blame
    b = ledger.peer("b")
    pace.cut((b.ident, 1, ROOT_ID), b, 10.5, lagged=False)
    assert b.down_pace == 10.5  # a copy from the root always measures its receiver


def test_while_settling_pace_answers_from_its_first_look_and_forgets_after() -> None:
    """The schedule's matching asks `slow` and `fast_holder` for every holder of every
    candidate chunk (70 % of a root's CPU with 200 agents): while it settles, nothing they
    read changes, so each is worked out once; after it, they look again."""
    ledger = Ledger(chunk_count=2, root=ROOT, upload_slots=1)
    pace = Pace(ledger, expected=1.0)
    a, b, c = (ledger.peer(name) for name in "abc")
    for key in ((c.ident, 0, a.ident), (c.ident, 0, b.ident)):
        pace.ended(key, c, 1.0, lagged=False)  # a and b upload at the usual pace
    ledger.add_holding(a, 0, Batch())
    ledger.add_holding(b, 0, Batch())
    pace.settling(True)
    assert not pace.slow(a) and pace.fast_holder(0, besides=b.ident)
    a.pace = 10.0  # (nothing in a settle does this: it shows the answers are remembered)
    assert not pace.slow(a) and pace.fast_holder(0, besides=b.ident)
    pace.settling(False)
    assert pace.slow(a) and not pace.fast_holder(0, besides=b.ident)
    assert pace.fast_holder(0, besides=a.ident)  # b is fast


def test_a_root_copy_is_late_against_the_roots_own_copies() -> None:
    """When the root's link is no wider than the nodes' (the netns bench's one-layer case),
    its two slots halve it and every copy from the root takes twice a peer's transfer.
    Judged against the peers' transfers such copies lagged, and the root sent their chunks
    again on the link that is the narrow one (41 copies of 32 chunks, P95 1.65-1.78 x T_min
    against 1.56-1.67 without). A copy from the root is late at LATE times the root's own
    copies, when they take longer than the usual transfer."""
    ledger = Ledger(chunk_count=8, root=ROOT, upload_slots=1)
    pace = Pace(ledger, expected=1.0)
    batch = Batch()
    a, b, c = (ledger.peer(name) for name in "abc")
    for peer in (a, b, c):
        peer.demand = 2
    ledger.assign(a, 0, ROOT_ID, 0.0, batch)
    ledger.assign(b, 1, ROOT_ID, 0.0, batch)
    for key, took in (((a.ident, 0, ROOT_ID), 2.0), ((b.ident, 1, ROOT_ID), 2.0)):
        ledger.release(key, batch)
        pace.ended(key, ledger.peers[key[0]], took, lagged=False)  # root copies: 2 s
    for _ in range(30):  # many peer transfers of 1 s: the usual duration comes near 1 s
        pace.ended((c.ident, 2, a.ident), c, 1.0, lagged=False)
    assert pace.typical < 1.1
    ledger.assign(c, 3, ROOT_ID, 10.0, batch)
    pace.tick(13.0)  # 3 s: late against the peers' 1 s, not against the root's 2 s
    pace.lag_root_copies(13.0, 2, batch)
    assert not ledger.lagging
    pace.tick(14.1)  # past LATE x 2 s: late by the root's own measure too
    pace.lag_root_copies(14.1, 2, batch)
    assert ledger.lagging == {(c.ident, 3, ROOT_ID)}


def test_two_sources_running_late_at_once_make_their_receiver_slow() -> None:
    """The straggler never had a copy from the root: its first download, from a, runs late
    and gets a second source, b, which runs late too: two slow sources at once is its own
    link. Neither source's pace is charged when the copies are cut."""
    s = schedule(2, expected=1.0, transfer_timeout=10.0)
    s.origin_progress(2, now=0)
    for node in ("a", "b"):  # a and b get both chunks (one from the root, one from each other)
        s.request(node, want=1, now=0)
    for _ in range(3):
        for x in list(s.in_flight()):
            s.completed(x.node, x.chunk, x.source, now=1.0)
        for node in ("a", "b"):
            s.request(node, want=1, now=1.0)
    assert s.progress()["complete"] == 2
    (first,) = triples(s.request("straggler", want=2, now=1.0))
    second = [t for t in triples(s.expire(now=3.5)) if t[0] == "straggler"]
    assert second and second[0][2] != first[2]
    paces = {n: s.progress()["nodes"][n]["pace"] for n in ("a", "b")}
    s.expire(now=11.5)  # both cut by the transfer timeout
    assert {n: s.progress()["nodes"][n]["pace"] for n in ("a", "b")} == paces
    assert s.progress()["nodes"]["straggler"]["down_pace"] is not None  # known slow from now on


def test_a_slow_receivers_late_download_gets_no_second_source() -> None:
    """Its own link is why it is late: a second source would only take a fast peer's slot
    (a 2 Mbit/s straggler held two peers' slots per layer so, in the simulator)."""
    s = a_known_straggler(2, transfer_timeout=30.0)
    s.request("b", want=1, now=8.0)
    for _ in range(2):  # b takes both chunks
        for x in [x for x in s.in_flight() if x.node == "b"]:
            s.completed(x.node, x.chunk, x.source, now=8.0)
        s.request("b", want=1, now=8.0)
    (first,) = triples(s.request("straggler", want=2, now=8.0))
    assert first[:2] == ("straggler", 0)
    assert not [t for t in triples(s.expire(now=12.0)) if t[0] == "straggler"]


def test_a_root_copy_that_timed_out_marks_its_receiver_slow() -> None:
    """4 MiB at under 3.4 Mbit/s never ends within the 10 s transfer timeout: the cut copy's
    duration is what tells the schedule that this receiver is slow."""
    s = schedule(6, expected=1.0, transfer_timeout=10.0)
    s.origin_progress(6, now=0)
    s.request("a", want=1, now=0)
    s.completed("a", 0, ROOT, now=1.0)
    assert ("straggler", 1, ROOT) in triples(s.request("straggler", want=1, now=1.0))
    s.expire(now=11.5)  # it lagged at 3.5 s and timed out now
    assert s.progress()["nodes"]["straggler"]["down_pace"] == 10.5
    # ... so the next first copy goes to the fast node that waits for it, not to it.
    s.request("fast", want=1, now=11.5)
    out = triples(s.request("straggler", want=1, now=11.6)) + triples(s.expire(now=12.0))
    assert all(node != "straggler" or src != ROOT for node, _, src in out), out


def test_the_slow_receiver_rule_looks_at_a_bounded_number_of_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A freed root slot with 1000 waiters that are all slow receivers: each waiter's rule
    looks at SCAN others at most (it looked at every waiter: a second per event at 1000)."""
    s = schedule(16, expected=1.0)
    s.origin_progress(16, now=0)
    s.request("first", want=1, now=0)
    s.completed("first", 0, ROOT, now=1.0)
    s.request("busy", want=1, now=1.0)  # holds the root's slot
    for i in range(1000):
        s.request(f"n{i}", want=0, now=1.0)
        peer = s._peers[s._ledger.ids[f"n{i}"]]
        peer.down_pace, peer.root_copies = 10.0, 1  # white box: as if measured
    for i in range(1000):
        s.request(f"n{i}", want=2, now=1.0)
    calls = 0
    sluggish = s._pace.sluggish

    def counting(peer: object) -> bool:
        nonlocal calls
        calls += 1
        return sluggish(peer)  # type: ignore[arg-type]

    monkeypatch.setattr(s._pace, "sluggish", counting)
    s.completed("busy", 1, ROOT, now=1.5)
    assert calls <= 20 * 1000, calls


def test_a_slow_node_gets_the_roots_copy_once_no_fast_node_wants_the_chunk() -> None:
    """Found in CI under load (a small-cache swarm pull hung until the client gave up): a node
    whose uploads ran slow gets no first copy while a faster node exists, so that the copy
    spreads at the usual speed. But the fast nodes here are past the chunk (rings that passed
    it): nobody would ever pass it on, and the slow node waited for it forever."""
    s = schedule(4, endgame=0)
    s.origin_progress(4, now=0)
    assert triples(s.request("f", want=1, now=0)) == [("f", 0, ROOT)]
    s.completed("f", 0, ROOT, now=1)
    assert triples(s.request("s", want=1, now=1)) == [("s", 1, ROOT)]
    s.completed("s", 0, "f", now=2)  # (it had chunk 0 on its own: recorded all the same)
    s.request("f", have=[], want=0, now=2, past=1)  # f's ring let chunk 0 go
    assert triples(s.request("g", want=1, now=2)) == [("g", 0, "s")]
    s.completed("g", 0, "s", now=10)  # 8 usual durations: s uploads slowly
    s.completed("s", 1, ROOT, now=10)
    for node in ("f", "g"):  # the fast nodes are past the layer (done, their rings empty)
        s.request(node, have=[], want=0, now=10, past=4)
    assert s.progress()["nodes"]["s"]["pace"] == 8
    got = triples(s.request("s", want=1, now=10))
    assert got == [("s", 2, ROOT)], "the slow node is the only one that still wants chunk 2"


def test_a_node_that_avoids_the_only_fast_holder_takes_the_roots_copy_or_a_slow_one() -> None:
    """The slow-source rule skips a slow holder while a faster one holds the chunk: not when
    the node avoids that faster one. A straggler in the chaos bench waited for its last chunk
    for ever so: its transfers from the one fast holder had timed out, every other holder was
    slow, and the root only served a chunk whose every holder the node avoided. For that node
    the chunk is held by slow peers only: root-only, as striping has it; with the root's slot
    busy, a slow holder serves it."""
    for root_busy in (False, True):
        s = schedule(2)
        s.origin_progress(2, now=0)
        for node in ("fast", "slow1", "slow2"):
            s.request(node, have=[0, 1], want=0, now=0)
        peers = {p.name: p for p in s._peers.values()}  # white box: paces as if measured
        s._pace.typical = 0.1
        peers["fast"].pace, peers["slow1"].pace, peers["slow2"].pace = 0.05, 1.0, 1.0
        assert triples(s.request("r", want=1, now=1.0)) == [("r", 0, "fast")]
        s.failed("r", 0, "fast", bad_data=False, now=2.0)  # timed out: r avoids fast from now on
        if root_busy:
            s.request("other", have=[], want=0, now=2.0, past=2)  # (gets nothing: past it all)
            s._ledger.root_uploads = s._root_slots()  # white box: both slots sending
        out = triples(s.request("r", want=1, now=2.0))
        if root_busy:
            assert out and out[0][:2] == ("r", 0) and out[0][2] in ("slow1", "slow2"), out
        else:
            assert out == [("r", 0, ROOT)]


def test_a_chunk_whose_holders_are_all_avoided_or_slow_comes_from_the_root() -> None:
    """The chaos bench's agent restart: the killed node holds a chunk (said `finishing`, never
    stored) and every other node avoids it (their transfers from it were refused); the one
    other holder is slow, busy with an upload to the dead node that nobody will ever report.
    Nodes waited for that chunk until the root forgot the dead node (6 s): the root served it
    only to a node avoiding *every* holder."""
    s = schedule(2)
    s.origin_progress(2, now=0)
    s._pace.typical = 1.0  # white box: the usual transfer takes 1 s
    s.request("dead", have=[0], want=0, now=0)
    s.request("busy", have=[0, 1], want=0, now=0)
    assert triples(s.request("dead", want=1, now=0)) == [("dead", 1, "busy")]  # never ends
    s.request("w", have=[], want=0, now=0)
    s.failed("w", 0, "dead", bad_data=False, now=0.5)  # (no such transfer: nothing avoided)
    s._ledger.avoid(s._peers[s._ledger.ids["w"]], s._ledger.ids["dead"])  # refused: avoids
    out = triples(s.request("w", want=1, now=5.0))  # busy's upload runs 5 x usual: slow
    assert out == [("w", 0, ROOT)]


def test_waiters_get_the_roots_copy_once_the_only_holders_upload_turns_slow() -> None:
    """No event says that a running upload turned slow: `expire` looks, and the root sends
    the chunks only slow peers hold to the nodes waiting for them (they waited for the busy
    holder's slot, which an upload to a dead node held until the root forgot it)."""
    s = schedule(2)
    s.origin_progress(2, now=0)
    s._pace.typical = 1.0  # white box: the usual transfer takes 1 s
    s.request("busy", have=[0, 1], want=0, now=0)
    assert triples(s.request("dead", want=1, now=0)) == [("dead", 0, "busy")]
    assert not triples(s.request("w", have=[1], want=1, now=0.5))  # waits for busy's slot
    assert triples(s.expire(now=1.5)) == []  # not late yet
    assert triples(s.expire(now=2.5)) == [("w", 0, ROOT)]


def test_bad_data_bans_the_source_for_the_layer() -> None:
    s = schedule(2, upload_slots=2)
    s.origin_progress(2, now=0)
    s.request("liar", have=[0, 1], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "liar")]
    assert triples(s.request("y", want=1, now=0)) == [("y", 0, "liar")]
    out = s.failed("x", 0, "liar", bad_data=True, now=1)
    # y's transfer from the liar is cancelled, and the liar's chunks are root-only again.
    assert cancelled(out) == [("y", 0, "liar")]
    assert s.progress()["nodes"]["liar"]["banned"]
    assert s.progress()["copies"] == [0, 0]
    assert triples(s.request("x", want=1, now=1)) == [("x", 0, ROOT)]
    assert not s.request("y", want=1, now=1)  # the root is busy; the liar is not an option
    now = 1.0
    seen = []
    for node in ("x", "y", "p", "q", "r"):
        for _ in range(2):
            got = triples(s.request(node, want=1, now=now))
            for a in s.in_flight():
                now += 1
                seen += triples(s.completed(a.node, a.chunk, a.source, now=now))
            seen += got
    assert seen and all(src != "liar" for _, _, src in seen)
    assert s.failed("x", 0, "liar", bad_data=True, now=now) == Actions()  # again: no effect


def test_a_banned_node_may_still_download() -> None:
    s = schedule(2)
    s.request("p", have=[0, 1], want=0, now=0)
    s.request("liar", have=[0], want=0, now=0)
    s.request("x", have=[1], want=1, now=0)
    s.failed("x", 0, "liar", bad_data=True, now=1)
    got = triples(s.request("liar", want=1, now=1))
    assert len(got) == 1 and got[0][:2] == ("liar", 1)


def test_a_ban_outlives_leaving() -> None:
    s = schedule(1)
    s.request("liar", have=[0], want=0, now=0)
    s.request("x", want=1, now=0)
    s.failed("x", 0, "liar", bad_data=True, now=1)
    s.leave("liar", now=2)
    s.request("liar", have=[0], want=0, now=3)  # back, with the same name
    assert s.progress()["nodes"]["liar"]["banned"]
    s.origin_progress(1, now=3)
    assert triples(s.request("x", want=1, now=3)) == [("x", 0, ROOT)]


def test_timeout_frees_the_slot_and_another_holder_serves() -> None:
    s = schedule(1, transfer_timeout=5)
    s.request("a", have=[0], want=0, now=0)
    s.request("b", have=[0], want=0, now=0)
    first = triples(s.request("x", want=1, now=0))
    assert len(first) == 1
    stuck = first[0][2]
    assert not s.expire(now=4.9)
    assert cancelled(s.expire(now=5)) == first
    assert uploading(s) == {}
    other = "b" if stuck == "a" else "a"
    assert triples(s.request("x", want=1, now=5)) == [("x", 0, other)]
    # The other one times out too: x avoids every holder, so the root serves it.
    s.origin_progress(1, now=6)
    assert cancelled(s.expire(now=10)) == [("x", 0, other)]
    assert triples(s.request("x", want=1, now=10)) == [("x", 0, ROOT)]


def test_failed_transfer_frees_the_slot_and_is_retried_elsewhere() -> None:
    s = schedule(1)
    s.request("a", have=[0], want=0, now=0)
    s.request("b", have=[0], want=0, now=0)
    (x, chunk, src) = triples(s.request("x", want=1, now=0))[0]
    assert not cancelled(s.failed(x, chunk, src, bad_data=False, now=1))
    assert not s.progress()["nodes"][src]["banned"]
    assert triples(s.request("x", want=1, now=1)) == [("x", 0, "b" if src == "a" else "a")]


def test_a_source_that_evicted_the_chunk_stops_being_its_holder_but_is_not_avoided() -> None:
    """A 404 from a peer (its cache evicted the chunk) moves the chunk to another holder; the
    peer stays a good source of what it still holds, and the chunk is not assigned from it
    again until it holds it again."""
    s = schedule(2)
    s.request("a", have=[0, 1], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.request("b", have=[0], want=0, now=0)
    out = s.missing("x", 0, "a", now=1)
    assert triples(out) + triples(s.request("x", want=1, now=1)) == [("x", 0, "b")]
    assert not s.holds("a", 0) and s.holds("a", 1)
    assert not s.progress()["nodes"]["a"]["banned"]
    # x still takes chunk 1 from a: it was no fault of a's.
    out = s.completed("x", 0, "b", now=2)
    assert triples(out) + triples(s.request("x", want=1, now=2)) == [("x", 1, "a")]


def test_a_chunk_nobody_holds_any_more_is_the_roots_again() -> None:
    s = schedule(1)
    s.origin_progress(1, now=0)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    out = s.missing("x", 0, "a", now=1)
    assert triples(out) + triples(s.request("x", want=1, now=1)) == [("x", 0, ROOT)]
    assert s.progress()["copies"] == [0]


def test_a_node_past_its_first_chunks_is_given_the_window_after_them() -> None:
    """A node whose cache keeps a window of the layer lets chunks behind its readers go and
    says so (`past`, and `have` without them): they are never assigned to it again, its window
    starts at the first chunk it lacks from there, and it is no longer a source of them."""
    s = schedule(12, window=2)
    s.request("a", have=range(12), want=0, now=0)
    got = triples(s.request("x", want=1, now=0))
    assert got == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)
    s.completed("x", 1, "a", now=1)  # a transfer the node fetched on its own: still recorded
    out = s.request("x", have=[1], want=1, now=2, past=5)
    assert triples(out) == [("x", 5, "a")], "the window starts at 5, not at the released 0"
    assert not s.holds("x", 0) and s.progress()["nodes"]["x"]["first_missing"] == 5
    assert s.progress()["nodes"]["x"]["past"] == 5
    s.request("y", want=1, now=2)  # y may take chunk 0 from a, never from x (which let it go)
    assert all(a.source != "x" or a.chunk >= 1 for a in s.in_flight())


def test_a_node_past_every_chunk_is_complete() -> None:
    s = schedule(3)
    s.request("x", have=[2], want=1, now=0, past=3)
    assert s.progress()["complete"] == 1 and s.in_flight() == []


# --------------------------------------------------------------------------------------------
# The root's window: a root whose cache is smaller than the layer


def test_the_root_never_sends_a_chunk_it_let_go() -> None:
    """A root holding a window of the layer (`root_stored`, `root_released`) is a source of the
    chunks in its window only."""
    s = schedule(6, window=2)
    s.root_stored(0, now=0)
    s.root_released(0, now=0)
    for c in (2, 3):
        s.root_stored(c, now=0)
    assert s.holds(ROOT, 2) and not s.holds(ROOT, 0)
    assert not s.request("n", want=1, now=1), "chunks 0 and 1 (its window) are not at the root"
    assert triples(s.root_stored(1, now=2)) == [("n", 1, ROOT)]
    assert s.progress()["origin"] == 4 and s.progress()["root_holds"] == 3


def test_the_root_keeps_a_chunk_until_every_node_has_it_or_is_past_it() -> None:
    """What the root's ring may let go: not a chunk it is sending, not one a live node still
    wants (a peer's copy may be gone from its own window by the time a slower node wants it);
    yes once every node holds it or is past it."""
    s = schedule(4)
    s.root_stored(0, now=0)
    s.root_stored(1, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, ROOT)]
    s.request("b", want=0, now=0)
    assert s.root_keeps(0), "being sent"
    assert s.root_keeps(1), "a wants it and no peer holds it"
    s.completed("a", 0, ROOT, now=1)
    assert s.root_keeps(0), "a holds it, b still wants it"
    s.request("b", want=0, now=1, past=1)
    assert not s.root_keeps(0), "a holds it, b is past it"
    s.request("a", want=0, now=1, past=2)  # a's readers are past chunk 1: it wants it no more
    assert s.root_keeps(1), "b wants it"
    s.leave("b", now=2)
    assert not s.root_keeps(1)
    assert schedule(4).root_keeps(3) is False, "no node at all: nobody wants it"


def test_a_chunk_every_holder_let_go_is_lost_until_the_root_fetches_it_again() -> None:
    """The only holder of chunk 0 answers that it evicted it, and the root let it go long ago:
    the waiting node can get it from nobody (`lost`) until the root fetches it again from the
    origin; then the root sends it, and it is not lost any more."""
    s = schedule(4, window=2)
    s.root_stored(0, now=0)
    s.request("a", have=[0], want=0, now=0)
    s.root_released(0, now=0)
    s.root_stored(1, now=0)
    assert triples(s.request("b", want=1, now=1)) == [("b", 1, ROOT)]  # root-only first
    s.completed("b", 1, ROOT, now=1)
    assert triples(s.request("b", want=1, now=1)) == [("b", 0, "a")]
    assert s.lost() == []
    assert not s.missing("b", 0, "a", now=2)
    assert not s.request("b", want=1, now=2)  # its next plan request
    assert s.lost() == [0], "b waits for 0 (its window) and nobody holds it"
    assert triples(s.root_stored(0, now=4)) == [("b", 0, ROOT)]
    assert s.lost() == []


def test_a_chunk_is_lost_when_its_waiter_avoids_every_holder() -> None:
    s = schedule(2, window=1)
    s.root_stored(0, now=0)
    s.request("a", have=[0], want=0, now=0)
    s.root_released(0, now=0)
    assert triples(s.request("b", want=1, now=1)) == [("b", 0, "a")]
    s.failed("b", 0, "a", bad_data=False, now=2)  # b avoids a from now on
    s.request("b", want=1, now=2)
    assert s.lost() == [0]


def test_a_chunk_the_root_would_send_but_no_longer_has_is_not_its_to_send() -> None:
    """The root answered 404 for a chunk the schedule thought it held (it let it go between
    two reports): the schedule stops naming it as the chunk's source."""
    s = schedule(2)
    s.root_stored(0, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 0, ROOT)]
    s.missing("a", 0, ROOT, now=1)
    assert not s.request("a", want=1, now=1)
    assert not s.holds(ROOT, 0) and s.lost() == [0]


def test_leave_drops_holdings_and_transfers() -> None:
    s = schedule(2, root_upload_slots=2)
    s.origin_progress(2, now=0)
    s.request("a", have=[0], want=0, now=0)
    assert triples(s.request("a", want=1, now=0)) == [("a", 1, ROOT)]
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    out = s.leave("a", now=1)
    assert sorted(cancelled(out)) == [("a", 1, ROOT), ("x", 0, "a")]
    assert "a" not in s.progress()["nodes"]
    assert s.progress()["copies"] == [0, 0]
    assert not s.holds("a", 0)
    # Chunk 0 is root-only again.
    assert triples(s.request("x", want=1, now=1)) == [("x", 0, ROOT)]
    assert not s.leave("a", now=1)  # twice is harmless


def test_a_waiting_node_is_served_when_the_chunk_lands() -> None:
    s = schedule(3)
    assert not s.request("x", want=1, now=0)
    assert triples(s.origin_progress(1, now=0.5)) == [("x", 0, ROOT)]
    assert s.in_flight() == [Assignment(node="x", chunk=0, source=ROOT, issued=0.5)]


# --------------------------------------------------------------------------------------------
# Second sources: endgame and late transfers


def test_endgame_duplicate_first_to_finish_wins() -> None:
    s = schedule(2, endgame=1)
    s.request("a", have=[0, 1], want=0, now=0)
    s.request("b", have=[0, 1], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)  # the usual transfer takes 1 s
    # x lacks only its last chunk; it keeps a spare slot.
    assert triples(s.request("x", want=2, now=1)) == [("x", 1, "a")]
    assert not s.expire(now=1.9)  # not late yet
    assert triples(s.expire(now=2.1)) == [("x", 1, "b")]
    # b wins; a's transfer is cancelled, and a's late report changes nothing.
    out = s.completed("x", 1, "b", now=2.5)
    assert cancelled(out) == [("x", 1, "a")]
    assert uploading(s) == {}
    assert not s.completed("x", 1, "a", now=2.6)
    assert s.progress()["nodes"]["x"]["have"] == 2
    assert s.progress()["nodes"]["x"]["downloaded"] == 2


def test_no_duplicate_before_the_endgame_unless_late() -> None:
    s = schedule(8, endgame=1)
    s.request("a", have=range(8), want=0, now=0)
    s.request("b", have=range(8), want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)
    assert triples(s.request("x", want=2, now=1)) == [("x", 1, "a")]
    assert not s.expire(now=2.5)  # 1.5 usual durations: fine before the endgame
    assert triples(s.expire(now=3.5)) == [("x", 1, "b")]  # past 2: late


def test_no_second_source_without_spare_demand() -> None:
    s = schedule(2, endgame=2)
    s.request("a", have=[0, 1], want=0, now=0)
    s.request("b", have=[0, 1], want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)
    assert triples(s.request("x", want=1, now=1)) == [("x", 1, "a")]
    assert not s.expire(now=5)


def test_a_late_chunk_the_node_already_says_it_holds_gets_no_second_source() -> None:
    """Found in CI (a ring node at depth 4): a node's `have` listed a chunk still in flight to
    it (its bytes were in, the `done` in a later request); the chunk then turned late and the
    node, now a holder of it, was its own best second source: the root's plan handler raised
    "cannot fetch from itself" and its agents left it for the registry."""
    s = schedule(8, endgame=1)
    s.request("a", have=range(8), want=0, now=0)
    assert triples(s.request("x", want=1, now=0)) == [("x", 0, "a")]
    s.completed("x", 0, "a", now=1)
    assert triples(s.request("x", want=1, now=1)) == [("x", 1, "a")]
    assert not triples(s.request("x", have=[0, 1], want=2, now=3.5))  # 1 is in; past late
    assert not s.expire(now=4)
    assert triples(s.completed("x", 1, "a", now=4)) == [("x", 2, "a")]


# --------------------------------------------------------------------------------------------
# Bookkeeping and validation


def test_have_replaces_what_the_schedule_knew() -> None:
    s = schedule(3)
    s.request("a", have=[0, 1], want=0, now=0)
    assert s.holds("a", 0) and s.holds("a", 1) and not s.holds("a", 2)
    s.request("a", have=[1, 2], want=0, now=1)  # chunk 0 was evicted
    assert not s.holds("a", 0) and s.holds("a", 2)
    assert s.progress()["copies"] == [0, 1, 1]
    assert s.progress()["nodes"]["a"]["first_missing"] == 0


def test_completion_of_an_unknown_transfer_still_counts() -> None:
    s = schedule(2, transfer_timeout=1)
    s.request("a", have=[0, 1], want=0, now=0)
    s.request("x", want=1, now=0)
    s.expire(now=2)
    s.completed("x", 0, "a", now=3)
    assert s.holds("x", 0)
    assert uploading(s) == {}


def test_progress_counts() -> None:
    s = schedule(2)
    s.origin_progress(2, now=0)
    s.request("a", want=1, now=0)
    s.completed("a", 0, ROOT, now=1)
    p = s.progress()
    assert p["chunks"] == 2 and p["origin"] == 2 and p["complete"] == 0
    assert p["copies"] == [1, 0]
    assert p["root"] == {"uploading": 0, "uploaded": 1}
    assert p["nodes"]["a"]["have"] == 1 and p["nodes"]["a"]["from_root"] == 1


def test_actions_are_falsy_when_empty() -> None:
    assert not Actions()
    assert Actions(assigned=(Assignment(node="a", chunk=0, source="b", issued=0),))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.request("x", want=-1, now=0),
        lambda s: s.request(ROOT, want=1, now=0),
        lambda s: s.request("", want=1, now=0),
        lambda s: s.request("x", have=[4], want=1, now=0),
        lambda s: s.completed("x", 4, "a", now=0),
        lambda s: s.failed("x", -1, "a", bad_data=False, now=0),
        lambda s: s.origin_progress(5, now=0),
        lambda s: (s.expire(now=2), s.expire(now=1)),  # time went backwards
    ],
)
def test_bad_calls_raise(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call(schedule(4))


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_count": -1},
        {"window": 0},
        {"upload_slots": 0},
        {"root_upload_slots": 0},
        {"transfer_timeout": 0},
        {"endgame": -1},
        {"root": ""},
    ],
)
def test_bad_parameters_raise(kw: dict) -> None:
    args = {"chunk_count": 4, "root": ROOT, **kw}
    with pytest.raises(ValueError):
        LayerSchedule(**args)


def test_assignment_validates() -> None:
    with pytest.raises(ValueError):
        Assignment(node="a", chunk=-1, source="b", issued=0)
    with pytest.raises(ValueError):
        Assignment(node="a", chunk=0, source="a", issued=0)


def test_empty_layer() -> None:
    s = schedule(0)
    assert not s.origin_progress(0, now=0)
    assert not s.request("x", want=2, now=0)


# --------------------------------------------------------------------------------------------
# Random event sequences: the promises hold whatever happens


NODES = ("n0", "n1", "n2", "n3", "n4")


class ScheduleMachine(RuleBasedStateMachine):
    """Drives a LayerSchedule with arbitrary events and checks each decision against the
    truth: which node really holds which chunk, and which sources lied."""

    @initialize(
        chunks=st.integers(1, 6),
        window=st.integers(1, 4),
        slots=st.integers(1, 3),
        root_slots=st.integers(1, 3),
        endgame=st.integers(0, 2),
        expected=st.sampled_from([0.0, 0.2, 1.0]),  # > 0: root copies lag from the start
    )
    def setup(
        self, chunks: int, window: int, slots: int, root_slots: int, endgame: int, expected: float
    ) -> None:
        self.s = LayerSchedule(
            chunk_count=chunks,
            root=ROOT,
            window=window,
            upload_slots=slots,
            root_upload_slots=root_slots,
            transfer_timeout=5.0,
            endgame=endgame,
            expected=expected,
        )
        self.chunks, self.slots, self.root_slots = chunks, slots, root_slots
        self.now = 0.0
        self.origin = 0
        self.held: dict[str, set[int]] = {}  # live nodes -> chunks they really hold
        self.landed: dict[str, set[int]] = {}  # ... and chunks in that the root is not told of
        self.deepest: dict[str, int] = {}  # node -> the greatest depth it asked for
        self.banned: set[str] = set()
        self.at_root: set[int] = set()  # chunks really on the root's disk

    def check(self, actions: Actions) -> None:
        for a in actions.assigned:
            assert a.node in self.held, a  # a live node
            assert a.chunk not in self.held[a.node], a  # that lacks the chunk
            assert a.source not in self.banned, a  # from a source that never lied
            if a.source == ROOT:
                assert a.chunk in self.at_root, a
            else:
                assert a.chunk in self.held.get(a.source, ()), a  # that holds it
            assert a.issued == self.now
        self.check_slots(actions)

    def check_slots(self, actions: Actions) -> None:
        """At each new assignment: no more chunks on their way to a node than its depth (a
        second source aside), no more uploads than the source's slots, and no root copy of a
        chunk already on its way to that node."""
        s, led = self.s, self.s._ledger
        flights = s.in_flight()
        lagging = {(led.names[n], c, led.names[src]) for n, c, src in led.lagging}
        for a in actions.assigned:
            if a not in flights:
                continue  # cancelled again in the same batch
            sources = [b.source for b in flights if (b.node, b.chunk) == (a.node, a.chunk)]
            if len(sources) == 1:
                chunks = {b.chunk for b in flights if b.node == a.node}
                assert len(chunks) <= led.peers[led.ids[a.node]].depth, (a, chunks)
            live = [
                b
                for b in flights
                if b.source == a.source and (b.node, b.chunk, b.source) not in lagging
            ]
            if a.source == ROOT:
                assert len(live) <= s._root_slots(), (a, live)
                assert sources == [ROOT], ("a root copy of a chunk on its way", a, sources)
            else:
                assert len(live) <= led.slots(led.peers[led.ids[a.source]]), (a, live)

    def act(self, actions: Actions) -> None:
        self.check(actions)

    @rule(k=st.integers(1, 3))
    def origin_progress(self, k: int) -> None:
        self.at_root |= set(range(self.origin, min(self.chunks, self.origin + k)))
        self.origin = min(self.chunks, self.origin + k)
        self.act(self.s.origin_progress(self.origin, now=self.now))

    @rule(pick=st.integers(0, 50))
    def root_lets_go(self, pick: int) -> None:
        """The root's ring needs a slot: a chunk goes, if the schedule says it may."""
        held = sorted(self.at_root)
        if held:
            c = held[pick % len(held)]
            if not self.s.root_keeps(c):
                self.at_root.discard(c)
                self.s.root_released(c, now=self.now)

    @rule()
    def root_fetches_lost_chunks_again(self) -> None:
        for c in self.s.lost():
            assert c not in self.at_root and c < self.origin
            self.at_root.add(c)
            self.act(self.s.root_stored(c, now=self.now))

    @rule(
        node=st.sampled_from(NODES),
        want=st.integers(0, 3),
        tell=st.booleans(),
        depth=st.sampled_from([1, 1, 2, 3]),
        past=st.sampled_from([0, 0, 0, 1, 3, 6]),  # > 0: its readers are past those chunks
    )
    def request(self, node: str, want: int, tell: bool, depth: int, past: int) -> None:
        if node not in self.held:
            self.held[node] = set()
            tell = True
        if tell:
            self.held[node] |= self.landed.pop(node, set())
        have = sorted(self.held[node]) if tell else None
        # A lower depth takes effect as transfers end: bound by the deepest it ever asked.
        self.deepest[node] = max(self.deepest.get(node, 1), depth)
        self.act(self.s.request(node, have=have, want=want, now=self.now, depth=depth, past=past))

    @rule(node=st.sampled_from(NODES), pick=st.integers(0, 50))
    def ring_lets_go(self, node: str, pick: int) -> None:
        """A node's cache window passed a chunk its readers are done with: it drops it and
        says so (`have`, and `past` beyond it), keeping its demand."""
        held = sorted(self.held.get(node, ()))
        if held:
            c = held[pick % len(held)]
            self.held[node].discard(c)
            peer = self.s._ledger.peer(node)
            have, want, depth = sorted(self.held[node]), peer.demand, peer.depth
            self.act(
                self.s.request(node, have=have, want=want, now=self.now, past=c + 1, depth=depth)
            )

    @rule(pick=st.integers(0, 50))
    def lands_before_its_report(self, pick: int) -> None:
        """The bytes are in: the node's next `have` lists the chunk, its `done` comes later."""
        flights = self.s.in_flight()
        if flights:
            a = flights[pick % len(flights)]
            if a.chunk not in self.held[a.node]:
                self.landed.setdefault(a.node, set()).add(a.chunk)

    @rule(pick=st.integers(0, 50))
    def complete(self, pick: int) -> None:
        flights = self.s.in_flight()
        if flights:
            a = flights[pick % len(flights)]
            self.held[a.node].add(a.chunk)
            self.act(self.s.completed(a.node, a.chunk, a.source, now=self.now))

    @rule(pick=st.integers(0, 50))
    def finish(self, pick: int) -> None:
        """A transfer is in its last bytes: it counts as done (its node serves the chunk as
        soon as the bytes land), both its links may take the next one."""
        flights = self.s.in_flight()
        if flights:
            a = flights[pick % len(flights)]
            self.held[a.node].add(a.chunk)
            self.act(self.s.finishing(a.node, a.chunk, a.source, now=self.now))

    @rule(pick=st.integers(0, 50), bad=st.booleans())
    def fail_after_finishing(self, pick: int, bad: bool) -> None:
        """A transfer that said `finishing` failed after all: its node lacks the chunk."""
        ledger = self.s._ledger
        vouched = sorted(
            (ledger.names[p.ident], c, ledger.names[src])
            for p in ledger.peers.values()
            for c, src in p.vouched.items()
        )
        if vouched:
            node, chunk, source = vouched[pick % len(vouched)]
            self.held[node].discard(chunk)
            if bad and source != ROOT:
                self.banned.add(source)
            self.act(self.s.failed(node, chunk, source, bad_data=bad, now=self.now))

    def fail_one(self, pick: int, bad: bool) -> Assignment | None:
        """A transfer in flight fails (`bad`: its bytes did not match); which one, or None."""
        flights = self.s.in_flight()
        if not flights:
            return None
        a = flights[pick % len(flights)]
        self.landed.get(a.node, set()).discard(a.chunk)
        if bad and a.source != ROOT:
            self.banned.add(a.source)
        self.act(self.s.failed(a.node, a.chunk, a.source, bad_data=bad, now=self.now))
        return a

    @rule(pick=st.integers(0, 50), bad=st.booleans())
    def fail(self, pick: int, bad: bool) -> None:
        self.fail_one(pick, bad)

    @rule(pick=st.integers(0, 50), bad=st.booleans())
    def failure_overtakes_its_finishing(self, pick: int, bad: bool) -> None:
        """A transfer fails in its last bytes and its `failed` reaches the root before its
        `finishing` (two requests in flight; an older agent): its node lacks the chunk."""
        a = self.fail_one(pick, bad)
        if a is not None:
            if not self.s.flying(a.node, a.chunk, a.source):  # (else: the new one's, for all
                # the root can tell; agents hold a `failed` back until its `finishing` is in)
                self.act(self.s.finishing(a.node, a.chunk, a.source, now=self.now))

    @rule(pick=st.integers(0, 50))
    def evicted_at_the_source(self, pick: int) -> None:
        """The source's cache dropped the chunk; the receiver got 404 and says so."""
        flights = [a for a in self.s.in_flight() if a.source != ROOT]
        if flights:
            a = flights[pick % len(flights)]
            self.held[a.source].discard(a.chunk)
            self.act(self.s.missing(a.node, a.chunk, a.source, now=self.now))

    @rule(node=st.sampled_from(NODES))
    def leave(self, node: str) -> None:
        self.held.pop(node, None)
        self.landed.pop(node, None)
        self.act(self.s.leave(node, now=self.now))

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 6.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.act(self.s.expire(now=self.now))

    @invariant()
    def a_lone_waiter_is_never_stuck(self) -> None:
        """Liveness, where the rules leave no excuse: nothing in flight, one node still wants
        chunks (every other is past them or holds them), it has demand, and a chunk inside its
        window is at the root or with a holder it does not avoid: it must have been given one
        (a slow node once waited forever for fast nodes that were past the chunk)."""
        if not hasattr(self, "s") or self.s.in_flight():
            return
        ledger = self.s._ledger
        wanting = [
            p
            for p in ledger.peers.values()
            if any(not p.held[c] for c in range(p.past, self.chunks))
        ]
        if len(wanting) != 1 or wanting[0].demand <= 0:
            return
        peer = wanting[0]
        end = min(peer.first + self.s._window(peer), self.chunks)
        for c in range(max(peer.first, peer.past), end):
            if peer.held[c]:
                continue
            sources = {h for h in ledger.holders[c] if not (peer.avoid and h in peer.avoid)}
            assert c not in self.at_root and not sources, (peer.name, c, "stuck")

    @invariant()
    def promises_hold(self) -> None:
        if not hasattr(self, "s"):
            return
        flights = self.s.in_flight()
        ledger = self.s._ledger
        consistent(ledger)
        # A lagging transfer holds its node's download slot only.
        lagging = {(ledger.names[n], c, ledger.names[src]) for n, c, src in ledger.lagging}
        deepest = max(self.deepest.values(), default=1)
        assert ledger.root_lagging <= max(self.root_slots, deepest)
        load: dict[str, int] = {}
        chunks_of: dict[str, set[int]] = {}
        sources_of: dict[tuple[str, int], list[str]] = {}
        for a in flights:
            sources_of.setdefault((a.node, a.chunk), []).append(a.source)
            chunks_of.setdefault(a.node, set()).add(a.chunk)
            if (a.node, a.chunk, a.source) in lagging:
                continue
            load[a.source] = load.get(a.source, 0) + 1
            assert a.source not in self.banned
        for source, n in load.items():
            if source == ROOT:
                assert n <= max(self.root_slots, deepest), (source, n)
            else:
                assert n <= max(self.slots, self.deepest.get(source, 1)), (source, n)
        root_chunks = [
            a.chunk for a in flights if a.source == ROOT and (a.node, a.chunk, ROOT) not in lagging
        ]
        assert len(root_chunks) == len(set(root_chunks))  # one root copy of a chunk at a time
        for node, chunks in chunks_of.items():
            assert len(chunks) <= self.deepest[node], (node, chunks)  # `depth` at a time
        for key, sources in sources_of.items():
            assert len(sources) <= 2 and len(set(sources)) == len(sources), (key, sources)
        for node, held in self.held.items():
            for c in range(self.chunks):
                assert self.s.holds(node, c) == (c in held), (node, c)
        # The ledger's books: every transfer in flight counted once, as a download of its
        # node (a second entry once led to a KeyError).
        booked = [
            (p.ident, c, src)
            for p in ledger.peers.values()
            for c, ss in p.incoming.items()
            for src in ss
        ]
        assert len(booked) == len(set(booked)) and set(booked) == set(ledger.flights)
        for c in range(self.chunks):
            assert self.s.holds(ROOT, c) == (c in self.at_root), c
            if any(a.source == ROOT and a.chunk == c for a in flights):
                assert self.s.root_keeps(c)  # never let go while it is being sent


def test_the_machine_sees_a_lone_slow_waiter_stuck() -> None:
    """The liveness invariant, on the sequence that starved a slow node (random runs rarely
    reach it: 2000 examples did not): the fast nodes' windows passed every chunk, the slow
    node alone wants chunk 1, only the root has it. Fails on the schedule before 6bd69a7."""
    m = ScheduleMachine()
    m.setup(chunks=2, window=1, slots=1, root_slots=1, endgame=0, expected=1.0)
    m.origin_progress(k=2)
    m.request(node="n0", want=1, tell=True, depth=1, past=0)
    m.tick(dt=1.0)
    m.complete(pick=0)
    m.request(node="n1", want=1, tell=True, depth=1, past=0)  # chunk 0 from n0
    m.tick(dt=1.0)
    m.complete(pick=0)
    m.ring_lets_go(node="n0", pick=0)
    m.request(node="n0", want=0, tell=True, depth=1, past=6)  # done
    m.request(node="n2", want=1, tell=True, depth=1, past=0)  # chunk 0 from n1, its only holder
    m.tick(dt=6.0)
    m.complete(pick=0)  # six usual durations: n1 uploads slowly
    m.ring_lets_go(node="n2", pick=0)
    m.request(node="n2", want=0, tell=True, depth=1, past=6)  # done
    m.request(node="n1", want=1, tell=True, depth=1, past=0)
    m.a_lone_waiter_is_never_stuck()
    m.promises_hold()
    assert [(a.node, a.chunk, a.source) for a in m.s.in_flight()] == [("n1", 1, ROOT)]


TestScheduleMachine = ScheduleMachine.TestCase
TestScheduleMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# Simulation: the product's promise, near the Kumar-Ross floor


def report(label: str, result) -> None:  # type: ignore[no-untyped-def]
    print(f"{label}: {result.summary()}")


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("nodes", "link", "origin"),
    [(16, 100, 200), (8, 200, 400)],
    ids=["16x100Mbit", "8x200Mbit"],
)
def test_reference_swarm_reaches_the_floor(nodes: int, link: int, origin: int, seed: int) -> None:
    """Issue 4's settings: P95 within 1.3 x T_min, and the root sends each byte about once."""
    result = simulate(bench_case(nodes, link, origin, seed=seed))
    report(f"{nodes} nodes, seed {seed}", result)
    assert len(result.completion) == nodes
    assert result.p95 <= 1.3 * result.t_min
    assert result.root_upload_bytes <= 1.1 * result.config.file_size
    # Nothing fetched twice, and every node uploads about as much as it downloads.
    assert result.total_bytes <= 1.02 * nodes * result.config.file_size
    peer_uploads = [b for name, b in result.uploaded.items() if not name.startswith("root")]
    # (0.4: with pipelining a source whose upload is finishing serves its next waiter at once)
    assert min(peer_uploads) >= 0.4 * result.config.file_size
    assert max(peer_uploads) <= 1.5 * result.config.file_size


def test_reference_swarm_with_fair_link_sharing() -> None:
    """The policy does not rely on the simulator's link model: max-min fair sharing too."""
    result = simulate(bench_case(16, 100, 200, fair_sharing=True))
    report("fair sharing", result)
    assert result.p95 <= 1.3 * result.t_min


def test_thousand_nodes() -> None:
    """1000 nodes, 32 MiB in 1 MiB chunks: log2(1000) hops of tail. Each node is a real
    planner exchanging real (validated) plan messages with the schedule; a few seconds of CPU.
    The bound only catches a schedule gone quadratic, not a slower machine."""
    config = SwarmConfig(
        nodes=1000,
        file_size=32 * MiB,
        chunk_size=1 * MiB,
        upload=100 * Mbit,
        download=100 * Mbit,
        origin=1000 * Mbit,
    )
    started = time.process_time()
    result = simulate(config)
    cpu = time.process_time() - started
    report(f"1000 nodes, cpu {cpu:.1f}s", result)
    assert len(result.completion) == 1000
    assert result.p95 <= 1.8 * result.t_min
    assert result.root_upload_bytes <= 1.1 * config.file_size
    assert cpu < 60


def test_liars_are_dropped_and_everyone_finishes() -> None:
    """Three of 16 serve bad bytes: each is banned after its first lie (the simulator checks
    that no banned node is ever chosen again); the root resends the chunks only they held."""
    result = simulate(bench_case(16, liars=frozenset({2, 5, 11})))
    report("liars", result)
    assert len(result.completion) == 16
    # One wasted transfer per liar, or up to three: pipelining may start a liar's next upload
    # while the bytes of its first are still arriving, before anyone could know they are bad,
    # and cut-through may send a peer to the liar's victim for a chunk that never lands there
    # (its P2P port holds the request, then answers 404: no bytes move).
    chunks = result.config.chunk_count
    assert 16 * chunks + 3 <= result.transfers - result.cancelled <= 16 * chunks + 3 * 3
    assert result.p95 <= 1.6 * result.t_min
    assert result.root_upload_bytes <= 1.4 * result.config.file_size


def test_nodes_leaving_mid_layer() -> None:
    result = simulate(bench_case(16, leaves={3: 2.0, 7: 6.0, 12: 9.0}))
    report("leaves", result)
    assert set(result.completion) == {f"n{i}" for i in range(16)} - {"n3", "n7", "n12"}
    assert result.p95 <= 1.3 * result.t_min
    assert result.root_upload_bytes <= 1.2 * result.config.file_size


@pytest.mark.parametrize("refused", [True, False], ids=["port-refuses", "port-answers"])
def test_nodes_crashing_mid_layer(refused: bool) -> None:
    """A crash, unlike a leave, is news to nobody: the dead node's uploads break at their
    receivers, its downloads' sources and its roots never hear of it. Meanwhile the root
    counts it a holder of the chunks it said `finishing` for and its downloads as running,
    each holding a source's slot. The chaos bench's setting (6 agents, 2 layers of 16 MiB in
    1 MiB chunks, 100 Mbit/s) with a crash at several points of the pull.

    A root looks at the port of a source whose transfer failed (agent/swarm/liveness.py):
    refused, it forgets the node at once, and a crash costs what a leave does (1.15 x T_min
    on average here). A port that still answers (the chaos bench restarts the agent a second
    later) leaves the root to forget the node once it stopped asking (`gone_after`, the
    tracker's GONE_AFTER): 1.26 x on average; before the schedule served a chunk that only
    slow peers and peers a node avoids hold, the others finished 6 s late in one run of four
    (up to 3.1 x T_min)."""
    ratios = []
    for seed in range(8):
        for at in (0.6, 1.0, 1.5, 2.0):
            config = SwarmConfig(
                nodes=6,
                roots=2,
                layers=(16 * MiB + 100, 16 * MiB + 104),
                chunk_size=MiB,
                upload=100 * Mbit,
                download=100 * Mbit,
                origin=200 * Mbit,
                latency=0.002,
                seed=seed,
                crashes={seed % 6: at},
                refused=refused,
            )
            result = simulate(config)
            assert len(result.completion) == 5
            ratios.append(result.p95 / result.t_min)
    print(f"crashes: P95 mean {sum(ratios) / len(ratios):.2f}, worst {max(ratios):.2f} x T_min")
    assert max(ratios) <= (1.3 if refused else 1.8), ratios
    big = simulate(bench_case(16, crashes={3: 2.0, 7: 6.0, 12: 9.0}, refused=refused))
    report("crashes, 16 nodes", big)
    assert set(big.completion) == {f"n{i}" for i in range(16)} - {"n3", "n7", "n12"}
    assert big.p95 <= (1.3 if refused else 1.5) * big.t_min


@pytest.mark.parametrize("cache_chunks", [16, 10])
def test_a_layer_bigger_than_every_nodes_cache(cache_chunks: int) -> None:
    """Each node's cache holds a window of 16 or 10 of the 32 chunks: readers consume in
    order, the oldest chunks go, holdings shrink at the root (have, past, 404s reported as
    missing); every node completes, nothing is fetched twice by a node."""
    result = simulate(bench_case(16, node_cache_chunks=cache_chunks))
    report(f"cache window {cache_chunks} chunks", result)
    assert len(result.completion) == 16
    assert result.total_bytes <= 1.1 * 16 * result.config.file_size
    assert result.p95 <= 2.0 * result.t_min


@pytest.mark.parametrize("rate", [10, 1], ids=["10Mbit", "1Mbit"])
def test_a_slow_uploader_loses_its_requests(rate: int) -> None:
    """One node uploads at a tenth or a hundredth of the others' rate: nobody notices much."""
    result = simulate(bench_case(16, node_upload={4: rate * Mbit}))
    report(f"slow uploader {rate} Mbit/s", result)
    assert len(result.completion) == 16
    assert result.p95 <= 1.35 * result.t_min
    assert result.root_upload_bytes <= 1.1 * result.config.file_size


def straggler_and_alone(layer: int, chunk: int) -> tuple[float, float]:
    """The slowest of the other five nodes' times with a 2 Mbit/s node among six (100 Mbit/s
    links, origin 200, two roots, two layers of `layer` bytes), and the slowest time of the
    same swarm without it."""
    kw = {
        "nodes": 6,
        "layers": (layer, layer),
        "chunk_size": chunk,
        "upload": 100 * Mbit,
        "download": 100 * Mbit,
        "origin": 200 * Mbit,
        "roots": 2,
        "latency": 0.002,
        "time_limit": 3000.0,
    }
    alone = simulate(SwarmConfig(**kw))  # type: ignore[arg-type]
    slow = {0: 2 * Mbit}
    result = simulate(SwarmConfig(**kw, node_upload=slow, node_download=slow))  # type: ignore[arg-type]
    report(f"a 2 Mbit/s straggler among 6, 2 x {layer // MiB} MiB", result)
    assert len(result.completion) == 6
    others = [t for node, t in result.completion.items() if node != "n0"]
    return max(others), max(alone.completion.values())


def test_a_straggler_does_not_hold_the_others_back() -> None:
    """One of six nodes has 2 Mbit/s links (the others 100): the others finish within 1.3 x
    the same swarm without it (bench/chaos.py's straggler scenario; they took 3.8-4.2 x when
    the straggler held the root's only slot with the first copy of a chunk)."""
    others, alone = straggler_and_alone(16 * MiB, MiB)
    assert others <= 1.3 * alone


def test_a_straggler_does_not_hold_the_others_back_on_big_layers() -> None:
    """As above with 2 x 128 MiB in 4 MiB chunks: the straggler never gets a copy from the
    root here, so only its downloads tell that it is slow; its sources' timeouts made them
    look slow (1.78 x before; within 1.5 x now)."""
    others, alone = straggler_and_alone(128 * MiB, 4 * MiB)
    assert others <= 1.5 * alone


def test_nodes_joining_over_time() -> None:
    result = simulate(bench_case(16, start_spread=2.0))
    report("joining over 2 s", result)
    assert len(result.completion) == 16
    assert result.p95 <= 1.3 * result.t_min + 2.0
