"""Tests for agent/swarm/planner.py: the agent's side of a layer's swarm, by rule and by
hypothesis. Pure: events in, `Decisions` out, time passed as `now`; no sockets, no trio.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.swarm.depth import DEPTH_RTTS
from agent.swarm.plan import Plan
from agent.swarm.planner import (
    FLUSH_ATTEMPTS,
    KEEPALIVE,
    LATE,
    POLL_RETRY,
    Decisions,
    LayerPlanner,
    Transfer,
)
from agent.swarm.protocol import MAX_REPORTS, PlanTarget
from agent.swarm.schedule import LayerSchedule

DIGEST = "sha256:" + "ab" * 32
CHUNK = 4
ROOT = "10.0.0.1:65002"
PEERS = ("10.0.0.2:65002", "10.0.0.3:65002", "10.0.0.4:65002")


def sha(chunk: int) -> str:
    return hashlib.sha256(f"chunk {chunk}".encode()).hexdigest()


def planner(**overrides: object) -> LayerPlanner:
    args: dict[str, object] = {
        "digest": DIGEST,
        "upstream": "registry.example.com",
        "repo": "team/app",
        "chunk_size": CHUNK,
    }
    args.update(overrides)
    return LayerPlanner(**args)  # type: ignore[arg-type]


def plan(
    size: int | None = 4 * CHUNK,
    assignments: tuple[tuple[int, str], ...] = (),
    **overrides: object,
) -> Plan:
    count = 0 if size is None else -(-size // CHUNK)
    args: dict[str, object] = {
        "size": size,
        "chunk_size": CHUNK,
        "chunk_sha256": {i: sha(i) for i in range(count)},
        "assignments": assignments,
    }
    args.update(overrides)
    return Plan(**args)  # type: ignore[arg-type]


def reply_to(
    p: LayerPlanner,
    request: PlanTarget,
    reply: Plan,
    root: str,
    now: float,
    held: tuple[int, ...] = (),
) -> Decisions:
    """`answered`, and when it brings the size, `admitted` as the driver calls it at once
    (holding `held`): one set of decisions, with the size."""
    first = p.answered(request, reply, root, now)
    if first.size is None or p.over:
        return first
    assert not (first.start or first.requests or first.store), "the size comes alone"
    return dataclasses.replace(p.admitted(held, now), size=first.size)


def only(decisions: Decisions) -> PlanTarget:
    assert len(decisions.requests) == 1, decisions
    return decisions.requests[0]


def polls(decisions: Decisions) -> list[PlanTarget]:
    return [r for r in decisions.requests if r.poll]


def reports(decisions: Decisions) -> list[PlanTarget]:
    return [r for r in decisions.requests if not r.poll]


# --------------------------------------------------------------------------------------------
# Rules


def test_start_sends_the_standing_request_with_all_slots() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    assert request.poll and request.want == 2 and request.have is None
    assert request.fresh, "the root forgets what it knew of this node for the layer"
    d = p.unanswered(request, ROOT, "refused", 0.1)
    again = p.tick(0.1 + POLL_RETRY).requests or d.requests
    assert again and again[0].fresh, "the next root hears it too"
    d = p.answered(again[0], plan(size=None), ROOT, 0.2)
    later = p.tick(0.2 + POLL_RETRY).requests
    assert later and not later[0].fresh
    assert request.digest == DIGEST and request.repo == "team/app"
    assert p.polling


def test_an_answer_without_a_size_retries_after_a_pause() -> None:
    p = planner()
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=None), ROOT, 1.0)
    assert d.requests == () and d.wake_at == pytest.approx(1.0 + POLL_RETRY)
    assert p.tick(1.0 + POLL_RETRY / 2).requests == ()
    assert only(p.tick(1.0 + POLL_RETRY)).poll


def test_assignments_start_transfers_and_the_next_poll_asks_for_the_free_slot() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, ROOT),)), ROOT, 0.1)
    assert d.size == 4 * CHUNK
    assert d.start == (Transfer(chunk=0, source=ROOT),)
    assert [r.want for r in polls(d)] == [1]
    assert p.in_flight == 1


def test_a_full_slot_set_sends_no_poll_until_a_transfer_ends() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    assert len(d.start) == 2 and d.requests == ()
    assert d.wake_at == KEEPALIVE  # (the keepalive: the request went at 0.0)
    d = p.failed(1, PEERS[0], 0.2)
    # The standing request goes for the freed slot and carries the report with it.
    assert [(r.want, r.failed) for r in d.requests] == [(1, ((1, PEERS[0], False),))]


def test_a_node_whose_transfers_run_long_still_asks_every_keepalive() -> None:
    """The root forgets a node that has not asked for GONE_AFTER (6 s) while transfers to it
    run: a node on a slow link, its transfers long and none late by its own measure, was
    forgotten over and over (21 times in one chaos bench pull). It asks (a report of nothing)
    once KEEPALIVE passed without a request; not while a request is in flight, nor with
    nothing running."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    assert d.requests == () and d.wake_at == KEEPALIVE
    assert p.tick(1.0).requests == ()
    d = p.tick(KEEPALIVE)
    (alive,) = d.requests
    assert not alive.poll and (alive.done, alive.failed, alive.finishing) == ((), (), ())
    assert alive.have == frozenset(), "what it holds: it may have been forgotten"
    assert p.tick(KEEPALIVE + 5).requests == (), "one at a time: the last is in flight"
    d = reply_to(p, alive, plan(), ROOT, KEEPALIVE + 5.1)  # a slow answer: due again at once
    (again,) = d.requests
    assert not again.poll and d.wake_at is None
    d = reply_to(p, again, plan(), ROOT, KEEPALIVE + 5.2)
    assert d.wake_at == 2 * KEEPALIVE + 5.1  # counted from when the last one went
    for chunk, source in ((0, ROOT), (1, PEERS[0])):  # both end: nothing runs
        p.received(chunk, source, sha(chunk), KEEPALIVE + 6)
        p.stored(chunk, source, KEEPALIVE + 6)
    assert all(r.poll or r.done for r in p.tick(KEEPALIVE + 20).requests)


def test_a_finishing_transfer_frees_its_slot_and_tells_the_root_once() -> None:
    """Pipelining: the last bytes of a transfer hold no slot; the next one is asked for at
    once (the standing request carries the report), and the transfer still ends normally."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    assert len(d.start) == 2 and d.requests == ()  # both slots busy
    d = p.finishing(1, PEERS[0], 0.3)
    assert [(r.poll, r.want, r.finishing) for r in d.requests] == [(True, 1, ((1, PEERS[0]),))]
    assert p.finishing(1, PEERS[0], 0.31).requests == ()  # said once
    assert p.finishing(2, PEERS[1], 0.32).requests == ()  # not a transfer of ours
    d = p.received(1, PEERS[0], sha(1), 0.4)
    assert d.store == Transfer(chunk=1, source=PEERS[0]) and not p.tailing


def test_a_finishing_report_that_got_no_answer_goes_again_while_the_transfer_runs() -> None:
    p = planner(parallel=1)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    p.polling = True  # the standing request is out: the finishing report goes on its own
    sent = only(p.finishing(0, ROOT, 0.2))
    assert not sent.poll and sent.finishing == ((0, ROOT),)
    d = p.unanswered(sent, ROOT, "timed out", 0.3)
    assert [r.finishing for r in reports(d)] == [((0, ROOT),)]


def test_the_finishing_lead_follows_the_reports_round_trips() -> None:
    """Reports answered 100 ms after they left: the lead grows toward a few round trips."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    first = p.finish_lead
    now = 0.2
    for chunk, source in ((0, ROOT), (1, PEERS[0])):
        p.received(chunk, source, sha(chunk), now)
        for report in reports(p.stored(chunk, source, now)):
            p.answered(report, plan(), ROOT, now + 0.1)
        now += 0.2
    assert first < p.finish_lead < 3 * 0.1 + 1e-9


def test_the_finishing_lead_is_a_round_trip_and_the_wait_for_a_first_byte() -> None:
    """The next transfer starts a report round trip after `finishing` and then waits for its
    first byte: on the netns cluster ~7 ms and ~40 ms, and a lead of three round trips said
    `finishing` a median 20 ms before the last byte (bench/transfers.py), too late for the
    next one. Once waits are known the lead is the round trip plus their recent median."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT), (1, PEERS[0]), (2, PEERS[1]))), ROOT, 0.1)
    assert p.finish_lead == 3 * p.rtt  # nothing measured yet
    p.finishing(0, ROOT, 0.3, waited=0.040)
    p.received(1, PEERS[0], sha(1), 0.4, waited=0.010)
    p.received(2, PEERS[1], sha(2), 0.5, waited=0.030)
    assert p.finish_lead == pytest.approx(p.rtt + 0.030)  # the median of 10, 30, 40 ms


NODE = "10.0.0.9:65002"


def to_root(s: LayerSchedule, request: PlanTarget, now: float) -> tuple[tuple[int, str], ...]:
    """The root's tracker takes `request` as agent/swarm/tracker.py does (its reports, then
    `have` and demand); the assignments it made for this node."""
    out = [s.completed(NODE, c, src, now) for c, src in request.done]
    out += [s.failed(NODE, c, src, bad_data=b, now=now) for c, src, b in request.failed]
    out += [s.missing(NODE, c, src, now) for c, src in request.missing]
    out += [s.finishing(NODE, c, src, now) for c, src in request.finishing]
    out.append(s.request(NODE, have=request.have, want=request.want, now=now, past=request.past))
    return tuple((a.chunk, a.source) for x in out for a in x.assigned if a.node == NODE)


def test_a_root_that_dropped_a_finishing_chunk_hears_of_it_once_it_is_stored() -> None:
    """`have` goes with a request while a transfer is in its last bytes (a ring let a chunk
    go, or a new root is told what we hold): it cannot list that chunk, and the root drops the
    holding its `finishing` made. The chunk's `done` must follow then, or the root never
    learns that this node holds it (and keeps assigning it here)."""
    s = LayerSchedule(chunk_count=4, root=ROOT)
    s.origin_progress(4, now=0)
    s.request(PEERS[0], have=[0, 1, 2, 3], want=0, now=0)
    p = planner(parallel=2)
    request = only(p.start(0.0))
    assigned = to_root(s, request, 0.0)
    assert assigned == ((0, PEERS[0]),)
    reply_to(p, request, plan(assignments=assigned), ROOT, 0.05)
    p.tell_have = True  # (as `released(evicted=...)` or `unanswered` set it)
    for request in p.finishing(0, PEERS[0], 0.1).requests:
        assert request.have is not None and 0 not in request.have
        to_root(s, request, 0.1)
    p.received(0, PEERS[0], sha(0), 0.2)
    for request in p.stored(0, PEERS[0], 0.3).requests:
        to_root(s, request, 0.3)
    assert s.holds(NODE, 0)


def test_a_chunk_assigned_again_while_in_its_last_bytes_is_reported_done() -> None:
    """The root assigned a chunk whose transfer said `finishing` (it dropped that holding:
    a `have` without it, or a peer that asked here too early and got 404): its `done` must
    follow, or the second transfer, cancelled here, stays in the root's books until it times
    out (and this node gets nothing meanwhile: one download at a time)."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, PEERS[0]),)), ROOT, 0.1)
    [standing] = polls(d)
    p.finishing(0, PEERS[0], 0.2)
    d = p.answered(standing, plan(assignments=((0, PEERS[1]),)), ROOT, 0.3)
    assert d.start == (Transfer(chunk=0, source=PEERS[1]),)
    d = p.received(0, PEERS[0], sha(0), 0.4)
    assert d.cancel == (Transfer(chunk=0, source=PEERS[1]),)
    d = p.stored(0, PEERS[0], 0.5)
    assert (0, PEERS[0]) in [r for request in d.requests for r in request.done]


def test_a_failure_after_finishing_is_reported_once_the_root_took_the_finishing() -> None:
    """A transfer fails in its last bytes while the request with its `finishing` is still out:
    its `failed` waits for that request's answer, or it may reach the root first, and the
    late `finishing` make this node a holder of a chunk it never gets."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((0, PEERS[0]),)), ROOT, 0.1)
    [standing] = polls(d)
    [told] = p.finishing(0, PEERS[0], 0.2).requests
    assert told.finishing == ((0, PEERS[0]),)
    d = p.failed(0, PEERS[0], 0.25)
    assert not [r for r in d.requests if r.failed]  # not before the `finishing` is in
    d = p.answered(told, plan(), ROOT, 0.3)
    assert [r.failed for r in d.requests if r.failed] == [((0, PEERS[0], False),)]


def test_a_failure_before_its_finishing_went_says_nothing_of_the_finishing() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, PEERS[0]),)), ROOT, 0.1)
    p.reports.finishing.append((0, PEERS[0]))  # queued behind MAX_REPORTS others, say
    p.tailing.add((0, PEERS[0]))
    d = p.failed(0, PEERS[0], 0.2)
    sent = d.requests
    assert [r.failed for r in sent] == [((0, PEERS[0], False),)]
    assert not [r for r in sent if r.finishing] and not p.reports.finishing


def test_a_404_is_reported_as_missing_not_as_a_failure() -> None:
    p = planner(parallel=1)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((2, PEERS[0]),)), ROOT, 0.1)
    d = p.missing(2, PEERS[0], 0.2)
    [sent] = d.requests  # the standing request goes for the free slot, with the report
    assert sent.missing == ((2, PEERS[0]),) and sent.failed == () and sent.want == 1
    assert p.in_flight == 0 and 2 not in p.held


def test_a_good_chunk_is_stored_then_reported_and_the_other_source_cancelled() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT), (0, PEERS[0]))), ROOT, 0.1)
    d = p.received(0, PEERS[0], sha(0), 0.2)
    assert d.store == Transfer(chunk=0, source=PEERS[0])
    assert d.cancel == (Transfer(chunk=0, source=ROOT),)
    assert reports(d) == []  # done only once stored
    assert p.in_flight == 0
    assert p.began == {}, "the cancelled source's start no longer times the spare's request"
    d = p.stored(0, PEERS[0], 0.3)
    # The standing request waited for the store, and carries the report: one request.
    assert [(r.poll, r.done) for r in d.requests] == [(True, ((0, PEERS[0]),))]
    assert 0 in p.held


def test_the_spare_slots_standing_request_goes_only_once_a_transfer_runs_late() -> None:
    """Per transfer one request: its `finishing` report, which brings the next chunk and
    stands for its `done` (a transfer too quick to say `finishing` is reported `done`). The
    spare slot's standing request, which only a late transfer needs (for a second source),
    goes once a transfer has run LATE times the usual duration, not for every transfer (a
    sixth of the requests were such polls, answered empty)."""
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(8 * CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    [standing] = polls(d)  # no transfer has ended yet: no usual duration to wait for
    assert p.received(0, ROOT, sha(0), 0.35).store == Transfer(chunk=0, source=ROOT)  # 0.25 s
    d = p.stored(0, ROOT, 0.36)
    assert [(r.poll, r.done) for r in d.requests] == [(False, ((0, ROOT),))]
    d = p.answered(standing, plan(8 * CHUNK, assignments=((1, PEERS[0]),)), ROOT, 0.4)
    assert d.start == (Transfer(chunk=1, source=PEERS[0]),) and d.requests == ()
    # Chunk 1's last bytes: the standing request carries the report, its slot's next chunk
    # comes with the answer.
    [standing] = p.finishing(1, PEERS[0], 0.6).requests
    assert standing.poll and standing.want == 2 and standing.finishing == ((1, PEERS[0]),)
    d = p.answered(standing, plan(8 * CHUNK, assignments=((2, PEERS[1]),)), ROOT, 0.61)
    assert d.start == (Transfer(chunk=2, source=PEERS[1]),) and d.requests == ()
    assert p.received(1, PEERS[0], sha(1), 0.65).requests == ()  # 0.25 s again
    d = p.stored(1, PEERS[0], 0.66)
    assert d.requests == () and 1 in p.held  # `finishing` said it: no `done`
    late = 0.61 + LATE * 0.25  # chunk 2 began at 0.61
    assert d.wake_at == pytest.approx(late)
    assert polls(p.tick(late - 0.01)) == []
    [spare] = polls(p.tick(late))
    assert spare.want == 1


def test_in_the_endgame_the_spare_slots_standing_request_goes_at_once() -> None:
    p = planner(parallel=2)
    d = reply_to(p, only(p.start(0.0)), plan(size=3 * CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    p.answered(polls(d)[0], plan(size=3 * CHUNK, assignments=((1, PEERS[0]),)), ROOT, 0.1)
    p.received(0, ROOT, sha(0), 0.2)
    d = p.stored(0, ROOT, 0.2)  # 2 chunks to come, one on its way: the endgame
    assert [r.want for r in polls(d)] == [1]


def test_a_late_copy_of_a_cancelled_transfer_is_ignored() -> None:
    p = planner()
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT), (0, PEERS[0]))), ROOT, 0.1)
    p.received(0, PEERS[0], sha(0), 0.2)
    d = p.received(0, ROOT, sha(0), 0.25)  # it finished before the cancel took effect
    assert d.store is None and d.requests == ()


def test_a_bad_chunk_is_reported_as_bad_data_and_not_stored() -> None:
    p = planner()
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((2, PEERS[1]),)), ROOT, 0.1)
    d = p.received(2, PEERS[1], "0" * 64, 0.2)
    assert d.store is None
    assert [r.failed for r in reports(d)] == [((2, PEERS[1], True),)]
    assert 2 not in p.held


def test_an_assignment_of_a_chunk_we_hold_is_reported_done_at_once() -> None:
    p = planner()
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT),)), ROOT, 0.1)
    p.received(0, ROOT, sha(0), 0.2)
    p.stored(0, ROOT, 0.3)
    poll = next(r for r in p.tick(0.3).requests) if p.polling is False else None
    assert poll is None or poll.poll
    request = PlanTarget(
        digest=DIGEST, upstream="registry.example.com", repo="team/app", want=1, poll=False
    )
    p.reporting += 1  # as if this report request were in flight
    d = reply_to(p, request, plan(assignments=((0, PEERS[2]),)), ROOT, 0.4)
    assert d.start == ()
    assert any((0, PEERS[2]) in r.done for r in reports(d))


def test_the_same_transfer_is_never_started_twice() -> None:
    p = planner(parallel=4)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(assignments=((1, PEERS[0]),)), ROOT, 0.1)
    second = polls(d)[0]
    d = reply_to(p, second, plan(assignments=((1, PEERS[0]), (1, PEERS[1]))), ROOT, 0.2)
    assert d.start == (Transfer(chunk=1, source=PEERS[1]),)


def test_a_root_that_does_not_answer_is_benched_and_told_our_holdings_next() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    reply_to(p, request, plan(assignments=((0, ROOT),)), ROOT, 0.1)
    p.received(0, ROOT, sha(0), 0.2)
    d = p.stored(0, ROOT, 0.3)
    report = reports(d)[0]
    d = p.unanswered(report, ROOT, "connection refused", 0.4)
    assert d.bench == ROOT
    again = reports(d)
    assert [r.done for r in again] == [((0, ROOT),)]  # the report goes again
    assert again[0].have == frozenset({0})  # and the next root learns what we hold


def test_denied_without_tls_means_fallback_else_the_clients_error() -> None:
    for fallback in (True, False):
        p = planner(denied_means_fallback=fallback)
        request = only(p.start(0.0))
        d = reply_to(p, request, plan(size=None, error="unauthorized", error_status=401), ROOT, 0.1)
        if fallback:
            assert d.fallback is not None and d.error is None
            assert d.fallback.kind == "credentials" and d.fallback.root == ROOT
            assert p.outcome == "fallback"
        else:
            assert d.error == (401, f"root {ROOT}: unauthorized") and d.fallback is None
        assert d.requests == () and d.start == ()


def test_a_root_with_another_chunk_size_means_fallback() -> None:
    p = planner()
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=64, chunk_size=8, chunk_sha256={}), ROOT, 0.1)
    assert d.fallback is not None and d.fallback.kind == "chunk_size" and d.size is None
    assert "8-byte chunks" in d.fallback.reason and d.fallback.root == ROOT


def test_no_root_means_fallback() -> None:
    p = planner()
    p.start(0.0)
    d = p.no_root(0.1)
    assert d.fallback is not None and d.fallback.kind == "no_root" and p.over
    assert d.fallback.root is None  # nobody to distrust


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_root_that_fails_sends_this_node_to_the_registry(status: int) -> None:
    """A root that cannot hold the layer (or whose origin broke) is no reason for a 5xx."""
    p = planner()
    request = only(p.start(0.0))
    answer = plan(size=None, error="layer does not fit this root's cache", error_status=status)
    d = reply_to(p, request, answer, ROOT, 0.1)
    assert d.error is None and d.fallback is not None
    assert d.fallback.kind == "root_error" and d.fallback.root == ROOT
    assert "does not fit" in d.fallback.reason
    assert d.requests == () and d.start == ()


@pytest.mark.parametrize("status", [404, 429, 401])
def test_the_registrys_own_answer_passed_on_by_a_root_is_the_clients(status: int) -> None:
    p = planner(denied_means_fallback=False)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=None, error="no", error_status=status), ROOT, 0.1)
    assert d.fallback is None and d.error == (status, f"root {ROOT}: no")


def test_a_root_whose_size_differs_from_the_registrys_is_not_used() -> None:
    p = planner(expected_size=4 * CHUNK)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=5 * CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    assert d.fallback is not None and d.fallback.kind == "size" and d.fallback.root == ROOT
    assert d.size is None and d.start == ()  # no reader ever saw the wrong size
    ok = planner(expected_size=4 * CHUNK)
    request = only(ok.start(0.0))
    d = reply_to(ok, request, plan(size=4 * CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    assert d.fallback is None and d.size == 4 * CHUNK and len(d.start) == 1


def test_a_root_that_never_learns_the_size_is_given_up_at_the_deadline() -> None:
    p = planner(size_deadline=5.0)
    request = only(p.start(10.0))
    d = reply_to(p, request, plan(size=None), ROOT, 11.0)
    assert d.wake_at == pytest.approx(11.0 + POLL_RETRY)
    d = p.tick(11.0 + POLL_RETRY)
    request = only(d)
    d = reply_to(p, request, plan(size=None), ROOT, 13.0)  # the root held it, still no size
    d = p.tick(13.0 + POLL_RETRY)
    assert d.fallback is None and d.wake_at == 15.0  # polling, but the deadline still counts
    d = p.unanswered(only(d), ROOT, "timed out", 14.9)
    assert d.fallback is None and d.wake_at is not None and d.wake_at <= 15.0
    d = p.tick(15.0)
    assert d.fallback is not None and d.fallback.kind == "no_size" and p.over
    assert d.requests == ()


def test_chunks_held_from_before_a_crash_are_not_fetched_and_the_root_hears_of_them() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = p.answered(request, plan(assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.1)
    assert d.size == 4 * CHUNK and d.start == () and d.requests == ()  # admit first
    assert p.tick(0.2).requests == ()  # nothing is asked while the layer is being admitted
    d = p.admitted({0, 2}, 0.3)
    assert d.start == (Transfer(chunk=1, source=PEERS[0]),)  # chunk 0 we have
    sent = d.requests
    assert any((0, ROOT) in r.done for r in sent), "the root's slot for chunk 0 frees at once"
    assert any(r.have == frozenset({0, 2}) for r in sent), "the root learns what we hold"


def test_a_layer_held_whole_from_before_a_crash_finishes_without_a_transfer() -> None:
    p = planner()
    request = only(p.start(0.0))
    p.answered(request, plan(size=2 * CHUNK), ROOT, 0.1)
    d = p.admitted({0, 1}, 0.2)
    assert d.start == () and not p.polling
    if not d.finished:  # the root still hears what we hold, once
        d = p.answered(only(d), plan(size=2 * CHUNK), ROOT, 0.3)
    assert d.finished and p.held == {0, 1}


def test_a_cache_window_limits_demand_and_released_chunks_make_room() -> None:
    """Three chunks fit this node's cache at once: chunks held and on their way fill it;
    letting one go (its readers are past it) makes room, and the root hears of it: `past` at
    once, `have` without it once its slot took another chunk (until then peers may fetch it)."""
    p = planner(parallel=2)
    p.answered(only(p.start(0.0)), plan(size=6 * CHUNK), ROOT, 0.1)
    d = p.admitted((), 0.1, window=3)
    d = p.answered(only(d), plan(size=6 * CHUNK, assignments=((0, ROOT), (1, PEERS[0]))), ROOT, 0.2)
    assert len(d.start) == 2 and d.requests == ()
    d = p.received(0, ROOT, sha(0), 0.3)
    assert polls(d) == []  # chunk 1 is on its way and not late: the spare's request waits
    p.stored(0, ROOT, 0.3)
    # Chunk 1 is late (twice the 0.1 s chunk 0 took): the standing request goes, for the one
    # slot left (1 held + 1 on its way, of 3).
    [standing] = polls(p.tick(0.4))
    assert standing.want == 1
    d = p.answered(standing, plan(size=6 * CHUNK, assignments=((2, PEERS[1]),)), ROOT, 0.4)
    p.received(1, PEERS[0], sha(1), 0.5)
    d = p.stored(1, PEERS[0], 0.5)
    assert polls(d) == [] and [r.done for r in d.requests] == [((1, PEERS[0]),)]
    assert p.in_flight == 1 and p.held == {0, 1}, "full: 2 held + 1 on its way"
    d = p.released({0}, 1, 0.6)
    assert p.held == {1} and p.got == {0, 1} and p.past == 1
    assert polls(d) == []  # the room is the spare's, and chunk 2 is not late yet
    [poll] = polls(p.tick(0.7))  # late: began at 0.4, usual 0.15 (0.1, then 0.3)
    assert poll.want == 1 and poll.past == 1 and poll.have is None
    assert p.passed == {0}
    d = p.answered(poll, plan(size=6 * CHUNK), ROOT, 0.7)
    d = p.released((), 1, 0.8, evicted={0})
    assert p.passed == set() and p.held == {1}
    asked = [*polls(d), *d.requests]
    assert asked and asked[0].have == frozenset({1})


def test_completion_counts_chunks_stored_even_after_they_went() -> None:
    p = planner(parallel=1)
    p.answered(only(p.start(0.0)), plan(size=2 * CHUNK), ROOT, 0.1)
    d = p.admitted((), 0.1, window=1)
    d = p.answered(only(d), plan(size=2 * CHUNK, assignments=((0, ROOT),)), ROOT, 0.2)
    p.received(0, ROOT, sha(0), 0.3)
    d = p.stored(0, ROOT, 0.3)
    assert polls(d) == []  # the cache is full until chunk 0 goes
    p.answered(only(d), plan(size=2 * CHUNK), ROOT, 0.35)
    d = p.released({0}, 1, 0.4)
    d = p.answered(only(d), plan(size=2 * CHUNK, assignments=((1, PEERS[0]),)), ROOT, 0.5)
    p.received(1, PEERS[0], sha(1), 0.6)
    d = p.stored(1, PEERS[0], 0.6)
    assert p.complete and p.held == {1} and p.got == {0, 1}
    d = p.answered(only(d), plan(size=2 * CHUNK), ROOT, 0.7)
    assert d.finished


def test_an_empty_layer_finishes_on_the_first_answer() -> None:
    p = planner()
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=0, chunk_sha256={}), ROOT, 0.1)
    assert d.size == 0 and d.finished


def test_reports_are_capped_per_request_and_the_rest_follow() -> None:
    count = MAX_REPORTS + 5
    p = planner(parallel=count)
    request = only(p.start(0.0))
    assignments = tuple((i, PEERS[i % 3]) for i in range(count))
    reply_to(p, request, plan(size=count * CHUNK, assignments=assignments), ROOT, 0.1)
    for i, source in assignments:
        p.failed(i, source, 0.2)  # each failure sends one report at once
    assert p.reports.failed == []


def test_completion_drops_the_poll_flushes_the_reports_and_finishes() -> None:
    p = planner(parallel=2)
    request = only(p.start(0.0))
    d = reply_to(p, request, plan(size=CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    standing = polls(d)
    assert standing and p.polling
    p.received(0, ROOT, sha(0), 0.2)
    d = p.stored(0, ROOT, 0.3)
    assert d.drop_poll and not d.finished
    last = only(d)
    assert not last.poll and last.done == ((0, ROOT),) and last.want == 0
    d = reply_to(p, last, plan(size=CHUNK), ROOT, 0.4)
    assert d.finished and p.outcome == "finished"


def test_the_last_reports_are_given_up_after_a_few_attempts() -> None:
    p = planner(parallel=1)
    request = only(p.start(0.0))
    reply_to(p, request, plan(size=CHUNK, assignments=((0, ROOT),)), ROOT, 0.1)
    p.received(0, ROOT, sha(0), 0.2)
    d = p.stored(0, ROOT, 0.3)
    for attempt in range(FLUSH_ATTEMPTS):
        assert not d.finished
        d = p.unanswered(only(d), ROOT, "gone", 0.4 + attempt)
    assert d.finished and d.requests == ()


# --------------------------------------------------------------------------------------------
# Driven to the end by a cooperative root


def drive(count: int, parallel: int) -> tuple[LayerPlanner, int]:
    """A root that assigns the lowest missing chunk not in flight to each request; returns
    the planner and how many events it took."""
    p = planner(parallel=parallel)
    now = 0.0
    queue = list(p.start(now).requests)
    transfers: list[Transfer] = []
    events = 0
    while not p.over:
        events += 1
        assert events < 100 * count, "no progress"
        now += 0.01
        if queue:
            request = queue.pop(0)
            busy = {c for c, s in p.fetching.items() if s} | p.held | p.storing
            free = [c for c in range(count) if c not in busy][: request.want]
            d = reply_to(
                p,
                request,
                plan(size=count * CHUNK, assignments=tuple((c, PEERS[c % 3]) for c in free)),
                ROOT,
                now,
            )
        elif transfers:
            t = transfers.pop(0)
            d = p.received(t.chunk, t.source, sha(t.chunk), now)
            if d.store is not None:
                queue.extend(d.requests)
                transfers.extend(d.start)
                d = p.stored(d.store.chunk, d.store.source, now)
        else:
            d = p.tick(now + POLL_RETRY)
        queue.extend(d.requests)
        transfers.extend(d.start)
    return p, events


@pytest.mark.parametrize(("count", "parallel"), [(1, 1), (5, 2), (33, 2), (20, 5)])
def test_a_cooperative_root_brings_the_layer_to_the_end(count: int, parallel: int) -> None:
    p, _ = drive(count, parallel)
    assert p.outcome == "finished" and p.held == set(range(count))


# --------------------------------------------------------------------------------------------
# Any order of events keeps the planner's promises


class PlannerMachine(RuleBasedStateMachine):
    """A root that answers, drops and assigns at random, transfers that succeed, fail or
    carry bad bytes, in any order. The invariants are the planner's promises."""

    @initialize(parallel=st.integers(1, 4), count=st.integers(1, 6))
    def begin(self, parallel: int, count: int) -> None:
        self.count = count
        self.p = planner(parallel=parallel)
        self.now = 0.0
        self.requests: list[PlanTarget] = []
        self.transfers: list[Transfer] = []
        self.accepted: list[Transfer] = []
        self.stored_chunks: list[int] = []
        self.apply(self.p.start(self.now))

    def apply(self, d: Decisions) -> None:
        assert d.wake_at is None or d.wake_at > self.now, "a wake-up in the past spins"
        for request in d.requests:
            reports = len(request.done) + len(request.failed) + len(request.missing)
            reports += len(request.finishing)
            assert reports <= MAX_REPORTS
            assert request.poll or reports or request.have is not None
        assert len(polls(d)) <= 1
        for t in d.start:
            assert t.chunk not in self.p.held, f"{t}: a chunk we hold"
            assert t not in self.transfers, f"{t}: started twice"
        for t in d.cancel:
            if t in self.transfers:
                self.transfers.remove(t)
        if d.store is not None:
            assert d.store.chunk not in self.stored_chunks, "stored twice"
            assert d.store.chunk not in [a.chunk for a in self.accepted], "accepted twice"
            self.accepted.append(d.store)
        if d.finished:
            assert self.p.got == set(range(self.count))  # every chunk stored at some point
        if d.drop_poll:  # the driver cancels the standing request: it never answers
            assert any(r.poll for r in self.requests)
            self.requests = [r for r in self.requests if not r.poll]
        self.requests.extend(d.requests)
        self.transfers.extend(d.start)

    def tick_clock(self) -> None:
        self.now += 0.01

    @precondition(lambda self: self.requests and not self.p.over)
    @rule(data=st.data())
    def reply_to(self, data: st.DataObject) -> None:
        self.tick_clock()
        request = self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))
        picks = data.draw(
            st.lists(
                st.tuples(st.integers(0, self.count - 1), st.sampled_from(PEERS)),
                max_size=3,
                unique=True,
            )
        )
        size = data.draw(st.sampled_from([None, self.count * CHUNK]))
        if size is None and self.p.size is None:
            picks = []
        answer = plan(size=size if self.p.size is None else self.count * CHUNK)
        answer = Plan(
            size=answer.size,
            chunk_size=CHUNK,
            chunk_sha256=answer.chunk_sha256,
            assignments=tuple(picks) if answer.size is not None else (),
        )
        self.apply(reply_to(self.p, request, answer, ROOT, self.now))

    @precondition(lambda self: self.requests and not self.p.over)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.tick_clock()
        request = self.requests.pop(data.draw(st.integers(0, len(self.requests) - 1)))
        self.apply(self.p.unanswered(request, ROOT, "gone", self.now))

    @precondition(lambda self: self.transfers and not self.p.over)
    @rule(data=st.data(), outcome=st.sampled_from(["good", "bad", "failed", "missing"]))
    def transfer_ends(self, data: st.DataObject, outcome: str) -> None:
        self.tick_clock()
        t = self.transfers.pop(data.draw(st.integers(0, len(self.transfers) - 1)))
        if outcome == "failed":
            self.apply(self.p.failed(t.chunk, t.source, self.now))
        elif outcome == "missing":
            self.apply(self.p.missing(t.chunk, t.source, self.now))
        else:
            digest = sha(t.chunk) if outcome == "good" else "0" * 64
            self.apply(self.p.received(t.chunk, t.source, digest, self.now))

    @precondition(lambda self: self.transfers and not self.p.over)
    @rule(data=st.data())
    def transfer_in_its_last_bytes(self, data: st.DataObject) -> None:
        self.tick_clock()
        t = self.transfers[data.draw(st.integers(0, len(self.transfers) - 1))]
        self.apply(self.p.finishing(t.chunk, t.source, self.now))

    @precondition(lambda self: self.accepted and not self.p.over)
    @rule(data=st.data())
    def store(self, data: st.DataObject) -> None:
        self.tick_clock()
        t = self.accepted.pop(data.draw(st.integers(0, len(self.accepted) - 1)))
        self.stored_chunks.append(t.chunk)
        self.apply(self.p.stored(t.chunk, t.source, self.now))

    @precondition(lambda self: self.p.held and not self.p.over)
    @rule(data=st.data())
    def cache_lets_go(self, data: st.DataObject) -> None:
        """The node's cache drops chunks its readers are past (a window on the layer)."""
        self.tick_clock()
        gone = data.draw(st.sets(st.sampled_from(sorted(self.p.held)), min_size=1))
        past = data.draw(st.integers(self.p.past, self.count))
        behind = sorted(self.p.passed | gone)
        evicted = data.draw(st.sets(st.sampled_from(behind))) if behind else set()
        self.apply(self.p.released(gone, past, self.now, evicted=evicted))
        assert not gone & self.p.held and gone <= self.p.got
        assert not evicted & (self.p.held | self.p.passed)

    @rule(seconds=st.floats(0.0, 1.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        if not self.p.over:
            self.apply(self.p.tick(self.now))

    @invariant()
    def at_most_one_standing_request(self) -> None:
        if hasattr(self, "p"):
            assert sum(1 for r in self.requests if r.poll) <= 1
            assert self.p.polling == any(r.poll for r in self.requests)

    @invariant()
    def transfers_match_the_planners_view(self) -> None:
        if hasattr(self, "p") and not self.p.over:
            mine = {Transfer(chunk=c, source=s) for c, ss in self.p.fetching.items() for s in ss}
            assert mine == set(self.transfers)

    @invariant()
    def only_transfers_under_way_are_in_their_last_bytes(self) -> None:
        """A transfer cancelled in its last bytes stays no `tailing` one: the standing request
        would wait for its report for ever (a chaos bench agent stopped asking, and its root
        forgot it, three chunks before the end)."""
        if hasattr(self, "p") and not self.p.over:
            assert self.p.tailing <= {(t.chunk, t.source) for t in self.transfers}

    @invariant()
    def the_planner_is_never_idle_while_work_remains(self) -> None:
        """Something is always under way: a request, a transfer, a store, or a wake-up."""
        if hasattr(self, "p") and not self.p.over:
            assert self.requests or self.transfers or self.accepted or self.p.poll_at is not None


PlannerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_planner_machine = PlannerMachine.TestCase


def test_every_pending_decision_reaches_the_driver() -> None:
    """`_settle` spells out what it hands on: a field added to `Pending` must be passed to
    `Decisions` too, or the driver would never see that decision."""
    import dataclasses
    import inspect

    from agent.swarm.decisions import Decisions, Pending
    from agent.swarm.planner import LayerPlanner

    source = inspect.getsource(LayerPlanner._settle)
    decided = {f.name for f in dataclasses.fields(Decisions)}
    for f in dataclasses.fields(Pending):
        assert f.name in decided
        assert f"{f.name}=" in source, f"_settle does not pass {f.name}"


# --------------------------------------------------------------------------------------------
# Depth: where a chunk crosses the link faster than a plan round trip


def _one_transfer(p: LayerPlanner, rtt: float, took: float) -> list[PlanTarget]:
    """The standing request answered after `rtt` with chunk 0 from a peer, which arrives
    `took` later and is stored: every request the planner sent on the way."""
    request = only(p.start(0.0))
    sent = list(reply_to(p, request, plan(assignments=((0, PEERS[0]),)), ROOT, rtt).requests)
    sent += p.received(0, PEERS[0], sha(0), rtt + took).requests
    sent += p.stored(0, PEERS[0], rtt + took + 0.001).requests
    return sent


def test_chunks_shorter_than_a_round_trip_deepen_the_pipeline_and_the_root_hears_it() -> None:
    """A 4 ms transfer after a 20 ms round trip: the node keeps as many in flight as the round
    trips take, asks for that many (and the spare) and tells the root its depth."""
    p = planner(parallel=2)
    sent = _one_transfer(p, rtt=0.020, took=0.004)
    assert p.depth == 1 + int(DEPTH_RTTS * 0.020 / 0.004)
    assert sent[-1].depth == p.depth and sent[-1].want == p.depth + 1


def test_chunks_that_outlast_a_round_trip_keep_one_transfer_and_its_spare() -> None:
    p = planner(parallel=2)
    sent = _one_transfer(p, rtt=0.020, took=0.300)
    assert p.depth == 1
    assert all(r.depth == 1 for r in sent) and sent[-1].want == 2


def test_the_depth_stops_at_the_planners_limit() -> None:
    p = planner(parallel=2, max_depth=3)
    _one_transfer(p, rtt=0.050, took=0.001)
    assert p.depth == 3


def test_room_in_a_full_window_is_told_to_the_root_holding_our_standing_request() -> None:
    """The window (12 chunks of a cache ring) fills while the standing request waits at the
    root with the demand it last heard, 0. When the readers move on, the room goes to the root
    at once in a report, not when the standing request expires two seconds later."""
    count, window = 40, 12

    def work(*chunks: int) -> Plan:
        return plan(size=count * CHUNK, assignments=tuple((c, PEERS[c % 3]) for c in chunks))

    p = planner(parallel=2, max_depth=1)
    p.answered(only(p.start(0.0)), plan(size=count * CHUNK), ROOT, 0.01)
    first = only(p.admitted(range(9), 0.01, window=window))  # resumed: 0..8 held
    d = p.answered(first, work(9), ROOT, 0.02)
    assert polls(d), "the standing request goes and the root holds it"
    p.received(9, PEERS[0], sha(9), 0.2)
    (report,) = p.stored(9, PEERS[0], 0.21).requests
    p.answered(report, work(*range(10, 10 + report.want)), ROOT, 0.22)
    for i, c in enumerate(range(10, 10 + report.want)):
        p.received(c, PEERS[c % 3], sha(c), 0.4 + i * 0.2)
        told = p.stored(c, PEERS[c % 3], 0.41 + i * 0.2).requests
    assert told and told[-1].want == 0 and p.polling, "the window is full; the poll waits"
    d = p.released(set(range(6)), 6, 1.0)
    assert [(r.poll, r.want) for r in d.requests] == [(False, 2)]


def test_a_root_from_before_depth_is_asked_again_one_transfer_at_a_time() -> None:
    """A root that predates `depth` refuses the parameter (400). That is no fault of the root
    and no reason to leave the swarm: the node goes on at depth 1 with the same root."""
    p = planner(parallel=2)
    request = _one_transfer(p, rtt=0.020, took=0.004)[-1]
    assert request.depth > 1
    body = b"unknown plan parameter 'depth'\n"  # the old root's answer, as the client says it
    d = p.unanswered(request, ROOT, f"plan: status 400: {body!r}", 1.1)
    assert d.bench is None and d.fallback is None
    assert p.depth == 1
    later = [*d.requests, *p.tick(1.1 + POLL_RETRY).requests]
    assert later and all(r.depth == 1 for r in later)
    assert later[0].done == request.done, "its reports go again"
