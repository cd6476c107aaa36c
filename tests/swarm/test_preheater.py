"""The preheat endpoint of a root, in one process on loopback (the nodes of test_peers): the
root fetches a layer into its cache when asked, answers how far it got, answers "cached" at
once the next time, and an agent's pull afterwards costs the origin nothing. Refusals: a
registry the root may not contact, a layer bigger than its cache, a layer the origin does not
have, a node that is not a root, credentials in clear text, a replayed request.
"""

from __future__ import annotations

import os
import time

import pytest
import trio

from agent.http.client import HttpClient
from agent.swarm.client import PeerError
from agent.swarm.preheat import PreheatTarget
from agent.swarm.protocol import AUTHORIZATION_HEADER
from agent.swarm.signing import request_headers
from tests.fakes import FakeBlob, FakeRegistry
from tests.swarm.test_peers import (
    CHUNK,
    REPO,
    TIMEOUT,
    TOKEN,
    Swarm,
    p2p_http,
    pull,
    registry,
    swarm,
)

__all__ = ["p2p_http", "registry", "swarm"]  # the fixtures, shared with test_peers


def preheat_request(registry: FakeRegistry, blob: FakeBlob, **fields: object) -> PreheatTarget:
    return PreheatTarget(
        digest=blob.digest,
        upstream=registry.upstream.key,
        repo=REPO,
        **fields,  # type: ignore[arg-type]
    )


async def test_a_preheated_layer_is_cached_at_the_root_and_pulls_cost_the_origin_nothing(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The first request starts the root's download and, held until it ends, answers it
    complete; the next answers `cached` without a GET. An agent's pull then comes from the
    root: the origin's one GET was the preheat's."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert agent.swarm is not None and root.preheater is not None
        client = agent.swarm.client
        blob = registry.add(os.urandom(7 * CHUNK + 5))
        reply = await client.preheat(
            root.node, preheat_request(registry, blob, size=blob.size), None
        )
        assert (reply.complete, reply.cached, reply.size, reply.stored) == (
            True,
            False,
            blob.size,
            blob.size,
        )
        assert blob.gets == [None]
        entry = root.data.cache.get(blob.digest)
        assert entry is not None and entry.verified
        again = await client.preheat(root.node, preheat_request(registry, blob), None)
        assert again.complete and again.cached
        assert await pull(agent, registry, blob) == blob.data
        assert blob.gets == [None], "the preheat's GET is the cluster's only one"
        assert agent.swarm.peer_bytes == blob.size
        assert root.preheater.requests == 2


async def test_a_preheat_answers_progress_while_the_root_downloads(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A body paused midway: the reply says how much the root holds, not complete; a client
    that stops asking leaves the download running, and asking again joins it (one GET)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert agent.swarm is not None and root.preheater is not None
        root.preheater._answer_within = 0.2
        client = agent.swarm.client
        blob = registry.add(os.urandom(6 * CHUNK), pause_at=3 * CHUNK)
        reply = await client.preheat(root.node, preheat_request(registry, blob), None)
        assert not reply.complete and reply.error is None
        assert reply.size == blob.size and 0 < reply.stored <= 3 * CHUNK
        blob.resume.set()
        while not (
            reply := await client.preheat(root.node, preheat_request(registry, blob), None)
        ).complete:
            pass
        assert not reply.cached and reply.stored == blob.size
        assert blob.gets == [None]


async def test_a_root_refuses_what_it_cannot_hold_and_passes_the_origin_s_no(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A registry outside the root's upstreams (403, nothing contacted), a layer bigger than
    its cache (507, nothing fetched), a layer the origin does not have (its 404)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root(CACHE_CAPACITY=8 * CHUNK)
        agent = await swarm.agent(root)
        assert agent.swarm is not None
        client = agent.swarm.client
        blob = registry.add(os.urandom(2 * CHUNK))
        elsewhere = PreheatTarget(digest=blob.digest, upstream="elsewhere.example", repo=REPO)
        reply = await client.preheat(root.node, elsewhere, None)
        assert reply.error_status == 403 and "upstreams" in (reply.error or "")
        big = registry.add(os.urandom(9 * CHUNK))
        reply = await client.preheat(root.node, preheat_request(registry, big, size=big.size), None)
        assert reply.error_status == 507 and "cache.capacity" in (reply.error or "")
        assert big.gets == [] and blob.gets == []
        ghost = FakeBlob(data=b"nobody has this", digest="sha256:" + "0" * 64)
        reply = await client.preheat(root.node, preheat_request(registry, ghost), None)
        assert reply.error_status == 404 and not reply.complete


async def test_preheat_asks_only_roots_and_never_in_clear_with_credentials_or_twice(
    swarm: Swarm, registry: FakeRegistry, p2p_http: HttpClient
) -> None:
    """An agent is not a root: 404. A request carrying a registry credential over plain P2P:
    400 and no fetch (the client itself never sends one without TLS). The same signed
    request twice: the second is refused as a replay."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert agent.swarm is not None
        client = agent.swarm.client
        blob = registry.add(os.urandom(2 * CHUNK))
        with pytest.raises(PeerError) as not_root:
            await client.preheat(agent.node, preheat_request(registry, blob), None)
        assert not_root.value.status == 404
        target = preheat_request(registry, blob, nonce=7).target()
        headers = request_headers(TOKEN.encode(), agent.node, "GET", target, time.time())
        async with p2p_http.request(
            "GET", f"http://{root.node}{target}", [*headers, (AUTHORIZATION_HEADER, b"Basic eA==")]
        ) as response:
            body = await response.read_all(4096)
        assert response.status == 400 and b"clear" in body
        assert blob.gets == []
        for expected in (200, 401):
            async with p2p_http.request("GET", f"http://{root.node}{target}", headers) as response:
                await response.read_all(4096)
            assert response.status == expected
        assert len(blob.gets) == 1
