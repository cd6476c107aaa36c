"""A root answers each plan request once: `agent.swarm.replay`, without sockets."""

from __future__ import annotations

from agent.swarm.protocol import PlanTarget, parse_target
from agent.swarm.replay import ReplayGuard, signed_time

NODE = "10.0.0.1:65002"
DIGEST = "sha256:" + "ab" * 32


def test_a_request_is_answered_once_and_another_node_may_send_the_same_bytes() -> None:
    guard = ReplayGuard()
    assert guard.admit(NODE, 1000, "s1") is None
    assert guard.admit(NODE, 1000, "s2") is None  # same second, another request
    assert "replayed" in (guard.admit(NODE, 1000, "s1") or "")
    assert guard.admit("10.0.0.2:65002", 1000, "s1") is None
    assert guard.refused == 1


def test_a_request_older_than_the_window_behind_the_nodes_newest_is_refused() -> None:
    guard = ReplayGuard(window=30)
    assert guard.admit(NODE, 1000, "old") is None
    assert guard.admit(NODE, 1100, "new") is None
    # "old" is forgotten (outside the window), so it is refused by its age instead.
    assert "before this node's latest" in (guard.admit(NODE, 1000, "old") or "")
    assert guard.admit(NODE, 1085, "late-but-fine") is None  # within the window of the newest


def test_memory_is_the_window_per_node_and_a_bounded_number_of_nodes() -> None:
    guard = ReplayGuard(window=10, max_nodes=3)
    for t in range(1000):
        assert guard.admit(NODE, t, f"s{t}") is None
    seen = guard._nodes[NODE]
    assert len(seen.signatures) <= 11 and len(seen.order) <= 11
    for i in range(10):
        guard.admit(f"10.0.1.{i}:65002", 5, "x")
    assert len(guard._nodes) == 3  # least recently heard from forgotten first


def test_the_nonce_travels_in_the_signed_target_and_makes_equal_requests_differ() -> None:
    base = PlanTarget(digest=DIGEST, upstream="r.example", repo="a/b", want=2, poll=True)
    one, two = (PlanTarget(**{**base.__dict__, "nonce": n}) for n in (7, 8))
    assert one.target() != two.target()
    assert parse_target("GET", one.target()) == one
    assert "n=" not in base.target() and parse_target("GET", base.target()).nonce == 0


def test_signed_time_reads_the_verified_header() -> None:
    assert signed_time([(b"X-Pollen-Time", b"1234"), (b"x-other", b"1")]) == 1234
