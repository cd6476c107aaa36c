"""Roots in tiers, with real processes on loopback: each group of agents has a root of its
own, and the group roots fetch their layers through the tier of roots above them
(`parentRoots`), so the origin still sends each layer once while no root answers every
agent of the cluster.

Each node has its own loopback address and the same P2P port; what the origin sent is counted
at the registry.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from harness import AgentProcess, Image, Registry, agent_status, free_port, push_image
from test_swarm_cluster import TOKEN, pull_all

MiB = 1 << 20


def start_groups(
    make_agent: Callable[..., AgentProcess],
    registry: Registry,
    *,
    groups: int,
    agents_per_group: int,
    parent_roots: str | None,
    env: dict[str, str] | None = None,
) -> tuple[list[AgentProcess], list[AgentProcess]]:
    """Group root j at 127.0.0.(2+j), its agents after all roots; every root's parent roots
    are `parent_roots` (None: every group root, the tier above being the group roots
    themselves). Returns (roots, agents)."""
    port = free_port("127.0.0.2")
    roots_at = [f"127.0.0.{2 + j}" for j in range(groups)]
    parents = parent_roots or ",".join(f"{a}:{port}" for a in roots_at)
    common = {
        "POLLEN_CLUSTER_TOKEN": TOKEN,
        "POLLEN_P2P_PORT": str(port),
        "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
        **(env or {}),
    }
    upstream = f"http://{registry.host}"
    roots = [
        make_agent(
            upstreams=upstream,
            env={**common, "POLLEN_ROOTS": f"{a}:{port}", "POLLEN_PARENT_ROOTS": parents},
            address=a,
            role="root",
            name=f"root-{a}",
        )
        for a in roots_at
    ]
    agents = []
    for j, root in enumerate(roots_at):
        for i in range(agents_per_group):
            address = f"127.0.0.{2 + groups + j * agents_per_group + i}"
            agents.append(
                make_agent(
                    upstreams=upstream,
                    env={**common, "POLLEN_ROOTS": f"{root}:{port}"},
                    address=address,
                    name=f"agent-{address}",
                )
            )
    return roots, agents


def test_group_roots_fetch_through_their_parent_tier_and_the_origin_sends_each_layer_once(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Two groups, each with its own root; the roots' parent tier is the two of them. Each
    root answers only its own group, yet each layer leaves the registry once: the root that
    does not own a layer among the parents got it from the one that does (counted in its
    status), not from the registry. Without parent roots each root would go to the registry
    for every layer its group asked for: two GETs per layer. A client on a group root pulls
    through the tier too."""
    image = make_image(layers=(3 * MiB, 2 * MiB, 512 * 1024), seed=41)
    push_image(image, registry, "team/tiers", "v1")
    roots, agents = start_groups(
        make_agent, registry, groups=2, agents_per_group=2, parent_roots=None
    )
    results = pull_all([*agents, *roots], "team/tiers:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    for digest in image.layer_digests:
        assert registry.blob_get_count(digest) == 1, f"origin sent {digest} more than once"
    statuses = [agent_status(root)["swarm"] for root in roots]
    through_parents = sum(s["parent"]["peer_bytes"] for s in statuses)
    # Every blob (the layers, and the config blob): the root that does not own it among the
    # parents took it through them.
    assert through_parents >= sum(layer.size for layer in image.layers), statuses
    assert all(s["origin_fallbacks"] == 0 for s in statuses), statuses
    for agent in agents:
        swarm = agent_status(agent)["swarm"]
        assert swarm["origin_fallbacks"] == 0, swarm
        assert swarm["peer_bytes"] >= sum(layer.size for layer in image.layers)
        # The group root holds its last chunk back until it verified the layer, so its
        # agents have its seal in time: no byte hashed a second time, in either group.
        assert swarm["rehashed_bytes"] == 0, swarm


def test_a_group_root_whose_parents_do_not_answer_fetches_from_the_origin(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """The parent tier is a root nobody runs: the group root's own download falls back to
    the registry (counted with its cause) and its agents pull through it as usual."""
    image = make_image(layers=(1 * MiB,), seed=42)
    push_image(image, registry, "team/orphan", "v1")
    dead = f"127.0.0.60:{free_port('127.0.0.60')}"
    roots, agents = start_groups(
        make_agent, registry, groups=1, agents_per_group=2, parent_roots=dead
    )
    results = pull_all(agents, "team/orphan:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    assert registry.blob_get_count(image.layer_digests[0]) == 1
    swarm = agent_status(roots[0])["swarm"]
    # The layer and the config blob, each because no parent root answered.
    assert swarm["origin_fallback_causes"] == {"no_root": 2}, swarm
    assert swarm["parent"]["peer_bytes"] == 0
    assert [r["root"] for r in swarm["parent"]["roots"]] == [dead], swarm["parent"]
    for agent in agents:
        assert agent_status(agent)["swarm"]["origin_fallbacks"] == 0


def test_a_layer_bigger_than_every_cache_crosses_both_tiers_from_the_origin_once(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Every cache (roots' and agents') holds 8 MiB, the layer is 24 MiB: the group root
    that does not own it passes it through a ring filled from the parent tier, keeping each
    chunk until its own group holds it; every pull completes with the right digests and the
    registry sends the layer about once (a chunk lost anyway comes back by Range)."""
    image = make_image(layers=(24 * MiB, 512 * 1024), seed=43)
    push_image(image, registry, "team/widetiers", "v1")
    roots, agents = start_groups(
        make_agent,
        registry,
        groups=2,
        agents_per_group=2,
        parent_roots=None,
        env={"POLLEN_CACHE_CAPACITY": "8MiB"},
    )
    results = pull_all(agents, "team/widetiers:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    total = sum(layer.size for layer in image.layers)
    sent = sum(registry.blob_bytes_sent(d) for d in image.layer_digests)
    assert sent <= 1.10 * total, (sent, total)
    for node in [*roots, *agents]:
        status = agent_status(node)
        assert status["swarm"]["origin_fallbacks"] == 0, status["swarm"]
        assert status["cache"]["used"] <= 8 * MiB


def test_a_parent_tier_that_never_answers_costs_the_group_no_extra_origin_copy(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """The parent root accepts connections and never answers (a blackhole, not a refusal):
    the group root waits out its plan timeout and then fetches the layer itself. Meanwhile it
    answers its agents' plan requests in time ("no size yet"), so they keep waiting for it
    instead of giving up on it and going to the registry each: one GET for the layer."""
    image = make_image(layers=(1 * MiB,), seed=44)
    push_image(image, registry, "team/blackhole", "v1")
    with socket.socket() as hole:
        hole.bind(("127.0.0.61", 0))
        hole.listen(64)  # the kernel completes the handshakes; nobody reads a byte
        port = hole.getsockname()[1]
        roots, agents = start_groups(
            make_agent, registry, groups=1, agents_per_group=2, parent_roots=f"127.0.0.61:{port}"
        )
        results = pull_all(agents, "team/blackhole:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    assert registry.blob_get_count(image.layer_digests[0]) == 1
    for agent in agents:
        assert agent_status(agent)["swarm"]["origin_fallbacks"] == 0
