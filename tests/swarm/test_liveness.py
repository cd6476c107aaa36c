"""Tests for agent/swarm/liveness.py: a root's look at the port of a source whose transfers
fail, on real loopback sockets."""

from __future__ import annotations

import socket

import trio

from agent.swarm.liveness import MAX_REMEMBERED, Liveness


def closed_port() -> int:
    """A loopback port nothing listens on (bound a moment ago, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_node_is_looked_at_once_per_interval() -> None:
    looks = Liveness(every=5.0)
    assert looks.due("10.0.0.1:65002", 0.0)
    assert not looks.due("10.0.0.1:65002", 4.9)  # a report cannot make the root look again
    assert looks.due("10.0.0.2:65002", 4.9)  # another node: its own interval
    assert looks.due("10.0.0.1:65002", 5.0)


def test_the_nodes_remembered_are_bounded_and_the_oldest_go_first() -> None:
    looks = Liveness(every=100.0)
    for i in range(MAX_REMEMBERED + 1):
        assert looks.due(f"node{i}:1", float(i) / 1000)
    assert looks.due("node0:1", 1.0), "forgotten: the oldest"
    assert not looks.due(f"node{MAX_REMEMBERED}:1", 1.0)


async def test_a_closed_port_is_gone_and_a_listening_one_is_not() -> None:
    looks = Liveness(timeout=5.0)
    with trio.fail_after(10):
        assert await looks.gone(f"127.0.0.1:{closed_port()}")
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        async with listener:
            port = listener.socket.getsockname()[1]
            assert not await looks.gone(f"127.0.0.1:{port}")  # (never accepted: still not gone)


async def test_a_name_without_a_port_or_unparsable_is_not_proof_of_anything() -> None:
    looks = Liveness(timeout=1.0)
    assert not await looks.gone("127.0.0.1")
    assert not await looks.gone("[not-an-address]:1")
