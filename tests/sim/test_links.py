"""The link model (agent/sim/links.py) without a simulation: max-min fair rates, TCP's climb
to a larger share, the lanes' idle time, the links' use by fifth of a pull."""

from __future__ import annotations

import math

import pytest

from agent.sim.links import RAMP_STEPS, Flow, Lanes, climbed, fair_rates, phase_use


def test_fair_rates_share_each_link_and_give_the_rest_to_who_can_use_it() -> None:
    # Node 0 uploads to 1 and 2; node 2 can only take 1 byte/s; node 3 uploads to 1.
    a, b, c = Flow(0, 1, 0, 0, 10), Flow(0, 2, 0, 1, 10), Flow(3, 1, 0, 2, 10)
    rates = fair_rates([a, b, c], [10.0, 0, 0, 10.0], [0, 12.0, 1.0, 0])
    assert rates[b] == pytest.approx(1.0)  # its download link
    assert rates[a] == pytest.approx(6.0) and rates[c] == pytest.approx(6.0)  # share node 1


def test_a_climb_closes_63_percent_of_the_gap_per_time_constant_and_then_arrives() -> None:
    rate = 0.0
    for _ in range(RAMP_STEPS):
        rate = climbed(rate, 100.0)
    assert rate == pytest.approx(100 * (1 - math.exp(-1)))
    steps = RAMP_STEPS
    while rate < 100.0:
        rate, steps = climbed(rate, 100.0), steps + 1
    # The first step whose gap is under 1 % lands on it: e^(-k / RAMP_STEPS) < 0.01.
    assert rate == 100.0 and steps == math.ceil(RAMP_STEPS * math.log(100))


def test_lanes_count_the_time_they_stood_empty_and_the_links_busy_time() -> None:
    lanes = Lanes(agents=2)
    lanes.moved(0, 0, 1.0, 1)  # node 0, layer 0: 1.0-2.0, 1.5-2.5 overlapping, 3.0-4.0
    lanes.moved(0, 0, 1.5, 1)
    lanes.moved(0, 0, 2.0, -1)
    lanes.moved(0, 0, 2.5, -1)
    lanes.moved(0, 0, 3.0, 1)
    lanes.moved(0, 0, 4.0, -1)
    lanes.moved(1, 0, 0.0, 1)  # node 1: one transfer, 0-1
    lanes.moved(1, 0, 1.0, -1)
    lanes.moved(2, 0, 0.0, 1)  # node 2 is a root: not a lane
    lanes.moved(2, 0, 9.0, -1)
    assert lanes.idle_share() == pytest.approx(0.5 / 4.0)  # 2.5-3.0 of spans 3 s + 1 s
    # Each agent's link was busy while any transfer came in: 1.0-2.5 and 3.0-4.0; 0-1.
    assert lanes.receiving(0) == pytest.approx(2.5) and lanes.receiving(1) == pytest.approx(1.0)


def test_phase_use_spreads_each_transfer_over_its_time_and_averages_the_pulls() -> None:
    # Pulls from 0. One of 10 s at 1 byte/s: 2 bytes in 0-2 s (the first fifth all used),
    # 3 bytes over 4-10 s (half a byte/s: the third fifth half, the fourth and fifth too).
    # One of 5 s at 2 bytes/s that moved 10 bytes evenly all along.
    pulls = [
        (10.0, 1.0, [(0.0, 2.0, 2.0), (4.0, 10.0, 3.0)]),
        (5.0, 2.0, [(0.0, 5.0, 10.0)]),
    ]
    assert phase_use(pulls, 0.0) == pytest.approx((1.0, 0.5, 0.75, 0.75, 0.75))
    # Transfers without time (a chunk of a few bytes) and pulls that took none count nothing.
    assert phase_use([(1.0, 1.0, [(0.5, 0.5, 9.0)]), (0.0, 1.0, [])], 0.0) == (0.0,) * 5


def test_lanes_say_what_each_finished_agent_moved_when() -> None:
    lanes = Lanes(agents=3)
    lanes.received(0, 1.0, 6.0, 50.0)  # from the run's first byte at 1.0: 10 bytes/s, 5 s
    lanes.received(1, 2.0, 3.0, 5.0)  # agent 1 never finishes: not counted
    lanes.received(3, 0.0, 9.0, 99.0)  # a root: not an agent
    phases = lanes.phases([6.0, None, None], [10.0, 10.0, 10.0])
    assert phases == pytest.approx((1.0,) * 5)
    assert Lanes(agents=1).phases([None], [1.0]) == (0.0,) * 5


def test_flows_hash_by_what_they_carry_so_sets_of_them_keep_one_order_in_every_run() -> None:
    """The engine keeps flows in sets: hashed by address, their order (and with it which of
    two tied transfers went first) changed from process to process, and one setting gave P95
    1.53 or 1.56 s by chance. Equality stays identity: two alike flows are two."""
    a, b = Flow(3, 5, 1, 7, 4096), Flow(3, 5, 1, 7, 4096)
    assert hash(a) == hash(b) == hash((3, 5, 1, 7))
    assert a != b and len({a, b}) == 2
    first = [Flow(s, d, 0, c, 10) for s in range(4) for d in range(4) for c in range(3)]
    again = [Flow(s, d, 0, c, 10) for s in range(4) for d in range(4) for c in range(3)]
    key = [(f.src, f.dst, f.chunk) for f in set(first)]
    assert key == [(f.src, f.dst, f.chunk) for f in set(again)]
