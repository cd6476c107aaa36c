"""The link model's max-min fair rates (agent/sim/links.py), without a simulation."""

from __future__ import annotations

import pytest

from agent.sim.links import Flow, fair_rates


def test_fair_rates_share_each_link_and_give_the_rest_to_who_can_use_it() -> None:
    # Node 0 uploads to 1 and 2; node 2 can only take 1 byte/s; node 3 uploads to 1.
    a, b, c = Flow(0, 1, 0, 0, 10), Flow(0, 2, 0, 1, 10), Flow(3, 1, 0, 2, 10)
    rates = fair_rates([a, b, c], [10.0, 0, 0, 10.0], [0, 12.0, 1.0, 0])
    assert rates[b] == pytest.approx(1.0)  # its download link
    assert rates[a] == pytest.approx(6.0) and rates[c] == pytest.approx(6.0)  # share node 1
