"""Tests for agent/swarm/intake.py: one plan request into a layer's schedule, as the tracker
and the simulated roots both take it. Pure: a real `LayerSchedule`, no sockets."""

from __future__ import annotations

from agent.swarm.intake import take_request
from agent.swarm.protocol import PlanTarget
from agent.swarm.schedule import Actions, LayerSchedule

ROOT = "root:1"
A, B, C = "a:1", "b:1", "c:1"


def request(**fields: object) -> PlanTarget:
    return PlanTarget(digest="sha256:" + "0" * 64, upstream="u", repo="r", **fields)  # type: ignore[arg-type]


def feed(s: LayerSchedule, asker: str, now: float = 0.0, **fields: object) -> list[Actions]:
    return [fed.actions for fed in take_request(s, asker, request(**fields), now)]


def assigned(answers: list[Actions]) -> list[tuple[str, int, str]]:
    return [(a.node, a.chunk, a.source) for actions in answers for a in actions.assigned]


def test_a_missing_report_takes_the_source_off_the_chunks_holders() -> None:
    """The source answered 404 (its cache let the chunk go): the chunk goes to another holder,
    never to the same one again. (The simulator once skipped these reports: its root kept
    naming the evicted copy and the node waited for ever.)"""
    s = LayerSchedule(chunk_count=1, root=ROOT, root_upload_slots=1)
    s.origin_progress(1, now=0)
    assert assigned(feed(s, A, want=1)) == [(A, 0, ROOT)]
    feed(s, A, have=frozenset({0}), done=((0, ROOT),), want=0, now=0.1)
    assert assigned(feed(s, C, want=1, now=0.1)) == [(C, 0, A)]  # A is idle: a peer first
    feed(s, B, want=0, now=0.1)
    answers = feed(s, C, missing=((0, A),), want=1, now=0.2)
    assert assigned(answers) == [(C, 0, ROOT)]  # A no longer counts: the root's copy


def test_past_reaches_the_schedule_with_the_demand() -> None:
    """`past`: the asker's readers are beyond these chunks; a root keeps a window of a layer
    bigger than its cache only for chunks someone still wants."""
    s = LayerSchedule(chunk_count=4, root=ROOT, root_upload_slots=1)
    s.origin_progress(4, now=0)
    s.root_stored(0, now=0)
    feed(s, A, want=0)
    assert s.root_keeps(0)  # A may still want it
    feed(s, A, want=0, past=1, now=0.1)
    assert not s.root_keeps(0)


def test_reports_go_in_before_the_demand_and_failures_are_named() -> None:
    """A failure report comes back with the answer it got (the caller may look whether the
    source is gone before the next part goes in); the demand goes last, so a slot a report
    freed is given at once."""
    s = LayerSchedule(chunk_count=2, root=ROOT, root_upload_slots=1)
    s.origin_progress(2, now=0)
    assert assigned(feed(s, A, want=1)) == [(A, 0, ROOT)]
    parts = list(take_request(s, A, request(failed=((0, ROOT, False),), want=1), 0.1))
    assert [fed.failed for fed in parts] == [(0, ROOT, False), None]
    assert assigned([parts[-1].actions]) == [(A, 0, ROOT)]


def test_a_fresh_request_forgets_what_the_schedule_knew_of_the_asker() -> None:
    s = LayerSchedule(chunk_count=2, root=ROOT, root_upload_slots=1)
    s.origin_progress(2, now=0)
    feed(s, A, want=0, have=frozenset({0, 1}))
    assert assigned(feed(s, B, want=1)) == [(B, 0, A)]
    answers = feed(s, A, fresh=True, want=0, now=0.1)  # restarted: holds nothing now
    assert [(a.node, a.chunk, a.source) for a in answers[0].cancelled] == [(B, 0, A)]
    assert assigned(feed(s, C, want=1, now=0.1)) == [(C, 0, ROOT)]
