"""Tests for agent/swarm/depth.py: how many transfers a node keeps in flight. Pure."""

from __future__ import annotations

import pytest

from agent.swarm.depth import DEPTH_RTTS, PipelineDepth
from agent.swarm.protocol import MAX_DEPTH


def run_alone(depth: PipelineDepth, chunk_s: float, rtt: float, count: int = 8) -> int:
    """`count` transfers one after the other, each a round trip to its first byte and
    `chunk_s` of the link: the depth after them."""
    now = 0.0
    for _ in range(count):
        began, now = now, now + rtt + chunk_s
        depth.ended(began, now, (), rtt, None)
    return depth.value


def test_a_chunk_that_outlasts_a_round_trip_goes_one_at_a_time() -> None:
    """100 Mbit/s: 335 ms per 4 MiB, a 15 ms round trip: one transfer per link, as before."""
    assert run_alone(PipelineDepth(), chunk_s=0.335, rtt=0.015) == 1


def test_a_chunk_shorter_than_a_round_trip_keeps_enough_in_flight_to_cover_them() -> None:
    """10 Gbit/s: 3.4 ms per 4 MiB; at 10 ms per round trip DEPTH_RTTS of them take about
    nine chunks' time of the link; at 50 ms more than the protocol allows (MAX_DEPTH)."""
    depth = PipelineDepth()
    assert run_alone(depth, chunk_s=0.0034, rtt=0.010) == 1 + int(DEPTH_RTTS * 0.010 / 0.0034)
    assert depth.alone == pytest.approx(0.0034)
    assert run_alone(PipelineDepth(), chunk_s=0.0034, rtt=0.050) == MAX_DEPTH
    assert run_alone(PipelineDepth(limit=4), chunk_s=0.0034, rtt=0.050) == 4


def test_transfers_that_share_the_link_count_their_share_of_it() -> None:
    """Four transfers at once, each 40 ms long on a link that moves a chunk in 10 ms: the
    link's time per chunk is 10 ms, not 40 (else the depth would fall as it rose)."""
    depth = PipelineDepth()
    rtt = 0.001
    for start in range(0, 40, 4):
        began = start * 0.010
        others = [began + 0.001 * k for k in (1, 2, 3)]  # three more began just after it
        depth.ended(began, began + 0.040 + rtt, others, rtt, None)
    assert depth.alone == pytest.approx(0.010, rel=0.35)


def test_a_ring_caps_the_depth_at_what_its_slots_hold_beside_the_roots_window() -> None:
    """A layer through a ring of 16 slots: the root's window (8) and the transfers on their way
    must fit, so no more than 4 at once however short the chunks; a whole layer has no cap."""
    depth = PipelineDepth()
    now = 0.0
    for _ in range(8):
        began, now = now, now + 0.011
        depth.ended(began, now, (), 0.010, 16)
    assert depth.value == 4


def test_a_short_last_chunk_counts_as_its_part_of_a_whole_one() -> None:
    """A 431-byte chunk (a config blob, a layer's tail) takes a round trip and next to nothing
    of the link: as a whole chunk's time it would have set a slow link's depth to the most."""
    depth = PipelineDepth()
    assert run_alone(depth, chunk_s=0.168, rtt=0.015) == 1
    assert depth.ended(10.0, 10.0161, (), 0.015, None, part=431 / (4 << 20)) == 1
