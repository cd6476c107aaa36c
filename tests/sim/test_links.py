"""The link model's max-min fair rates (agent/sim/links.py), without a simulation."""

from __future__ import annotations

import dataclasses

import pytest

from agent.sim.engine import simulate
from agent.sim.links import Flow, fair_rates
from agent.sim.model import Mbit, MiB, SwarmConfig


def test_fair_rates_share_each_link_and_give_the_rest_to_who_can_use_it() -> None:
    # Node 0 uploads to 1 and 2; node 2 can only take 1 byte/s; node 3 uploads to 1.
    a, b, c = Flow(0, 1, 0, 0, 10), Flow(0, 2, 0, 1, 10), Flow(3, 1, 0, 2, 10)
    rates = fair_rates([a, b, c], [10.0, 0, 0, 10.0], [0, 12.0, 1.0, 0])
    assert rates[b] == pytest.approx(1.0)  # its download link
    assert rates[a] == pytest.approx(6.0) and rates[c] == pytest.approx(6.0)  # share node 1


def test_a_shared_pool_caps_what_the_pooled_nodes_receive_together() -> None:
    """Three downloads of 10 bytes/s each, to nodes 1-3, with a pool of 12 for nodes below 3:
    the two pooled ones share 12, the third is not in the pool."""
    flows = [Flow(0, 1, 0, 0, 10), Flow(4, 2, 0, 1, 10), Flow(5, 3, 0, 2, 10)]
    up = [10.0, 0, 0, 0, 10.0, 10.0]
    down = [0, 10.0, 10.0, 10.0, 0, 0]
    rates = fair_rates(flows, up, down, pool=12.0, pooled=3)
    assert [rates[f] for f in flows] == pytest.approx([6.0, 6.0, 10.0])


def test_agents_sharing_one_machines_cores_take_longer() -> None:
    """Eight nodes whose CPU on one machine can receive two nodes' worth of bytes in all:
    the pull takes at least the pool's own floor (four times a node's), and nobody is lost."""
    own = SwarmConfig(
        nodes=8,
        layers=(16 * MiB,),
        chunk_size=MiB,
        upload=100 * Mbit,
        download=100 * Mbit,
        origin=800 * Mbit,
    )
    shared = dataclasses.replace(own, shared_receive=2 * 100 * Mbit)
    alone, together = simulate(own), simulate(shared)
    assert len(together.completion) == 8
    assert together.p95 > 2.5 * alone.p95
    assert together.p95 >= 8 * 16 * MiB / (2 * 100 * Mbit)  # the pool's own floor
