"""The swarm never costs a pull the registry would serve: in-process nodes on loopback.

Real agents (fetcher, cache, P2P client, as the daemon wires them) against a real root with a
cache too small for the layer, and against a fake root — a P2P application written here that
answers plan requests with a wrong size, or with a self-consistent chunk table of wrong bytes
and serves those bytes. In each case the agent fetches from the registry, counts why, and stops
asking that root about the layer; no client ever completes a wrong layer.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from agent.core.errors import RegistryError
from agent.fetch.model import LayerFailed
from agent.http.responses import Response, bytes_response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners
from agent.registry.routes import parse_digest
from agent.swarm.plan import Plan
from agent.swarm.protocol import ChunkTarget, PlanTarget, parse_target
from agent.swarm.signing import HEADER_REPLY_AUTH, request_auth, sign_reply
from tests.fakes import FakeBlob, FakeRegistry, read_into, serve
from tests.swarm.test_peers import (
    CHUNK,
    REPO,
    TIMEOUT,
    TOKEN,
    Peer,
    Swarm,
    pull,
    registry,
    swarm,
)

TOKEN_BYTES = TOKEN.encode()

__all__ = ["registry", "swarm"]  # the fixtures, shared with test_peers


class FakeRoot:
    """A root that answers every plan with `plan_for(blob)` and serves `chunk_bytes`."""

    def __init__(
        self,
        blob: FakeBlob,
        *,
        size: int,
        wrong_bytes: bool,
        token: bytes | None = TOKEN_BYTES,
        seal: str | None = None,
        fail_after_chunks: int | None = None,
    ) -> None:
        self.token = token  # signs its plans as a cluster member does; None: it cannot
        self.seal = seal  # a table digest it vouches for (the layer complete and verified)
        self.fail_after_chunks = fail_after_chunks  # then every plan is an origin failure
        self.blob = blob
        self.size = size
        self.wrong_bytes = wrong_bytes
        self.plans = 0
        self.chunks = 0
        self.assigned: set[int] = set()
        self.node = ""

    def chunk(self, index: int) -> bytes:
        data = self.blob.data[index * CHUNK : (index + 1) * CHUNK]
        if self.wrong_bytes:
            data = bytes(b ^ 0x5A for b in data)  # the same length, other bytes
        return data

    async def handle(self, request: Request) -> Response:
        target = parse_target(request.method, request.target)
        if isinstance(target, ChunkTarget):
            self.chunks += 1
            return bytes_response(200, self.chunk(target.index), b"application/octet-stream")
        assert isinstance(target, PlanTarget)
        self.plans += 1
        count = -(-self.size // CHUNK)
        if self.fail_after_chunks is not None and self.chunks >= self.fail_after_chunks:
            failed = Plan(size=None, chunk_size=CHUNK, error="origin broke", error_status=502)
            return self._signed(request, failed)
        fresh = [i for i in range(count) if i not in self.assigned][: target.want]
        self.assigned.update(fresh)  # each chunk once, as a real root's schedule does
        plan = Plan(
            size=self.size,
            chunk_size=CHUNK,
            chunk_sha256={i: hashlib.sha256(self.chunk(i)).hexdigest() for i in range(count)},
            assignments=tuple((i, self.node) for i in fresh),
            complete=self.seal is not None,
            table_sha256=self.seal,
        )
        return self._signed(request, plan)

    def _signed(self, request: Request, plan: Plan) -> Response:
        body = plan.to_json()
        extra = []
        if self.token is not None:
            signature = sign_reply(self.token, request_auth(request.headers), body)
            extra.append((HEADER_REPLY_AUTH, signature.encode()))
        return bytes_response(200, body, b"application/json", extra)

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await open_listeners("127.0.0.1", 0, None)
        self.node = f"127.0.0.1:{listener_port(listeners)}"
        server = HttpServer(self.handle, ServerSettings(), name="fake-root")
        await nursery.start(serve, server, listeners)
        return self.node


async def read_until_cut(agent: Peer, registry: FakeRegistry, blob: FakeBlob, why: str) -> bytes:
    """What a client of `agent` received of the layer before its response was cut for `why`."""
    received = bytearray()
    source = await agent.data.fetcher.open(
        upstream=registry.upstream,
        repo=REPO,
        digest=parse_digest(blob.digest),
        headers=[],
        size=blob.size,
    )
    with pytest.raises(LayerFailed, match=why):
        await read_into(source, received)
    return bytes(received)


async def test_a_root_whose_cache_cannot_hold_the_layer_sends_agents_to_the_registry(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The root answers 502 "does not fit": before, that was the client's 502; now the agent
    fetches the layer itself, counts the cause, and does not ask that root again about it."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root(CACHE_CAPACITY=4 * CHUNK)
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(10 * CHUNK + 7))
        assert await pull(agent, registry, blob) == blob.data
        assert agent.swarm is not None and agent.swarm.fallbacks == {"root_error": 1}
        assert agent.swarm.roots.owners(blob.digest) == []  # distrusted for this layer
        assert len(blob.gets) == 2  # the root's try, then the agent's own download
        entry = agent.data.cache.get(blob.digest)
        assert entry is not None and entry.verified


async def test_a_root_with_the_wrong_size_is_not_used(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """The registry told this node the size (the proxy's auth HEAD); a root that says
    otherwise is wrong or lying, and no reader ever sees its size."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(6 * CHUNK + 100))
        liar = FakeRoot(blob, size=blob.size + CHUNK, wrong_bytes=False)
        agent = await swarm.agent(await liar.start(nursery))
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert agent.swarm is not None and agent.swarm.fallbacks == {"size": 1}
        assert liar.plans == 1 and liar.chunks == 0
        assert blob.gets == [None]


@pytest.mark.parametrize("token", [None, b"not-the-cluster-token"], ids=["unsigned", "forged"])
async def test_a_plan_that_is_not_signed_for_its_request_is_never_used(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery, token: bytes | None
) -> None:
    """A plan with a wrong chunk table and wrong chunks, unsigned or signed without the
    cluster token (what anyone on a clear-text path could send): the agent refuses the reply
    before it fetches a single chunk, so its client's first attempt completes, from the
    registry; the root counts as not answering."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(6 * CHUNK + 100))
        liar = FakeRoot(blob, size=blob.size, wrong_bytes=True, token=token)
        agent = await swarm.agent(await liar.start(nursery))
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert liar.plans >= 1 and liar.chunks == 0
        assert agent.swarm is not None and sum(agent.swarm.fallbacks.values()) == 1
        assert blob.gets == [None]


async def test_a_root_with_a_self_consistent_wrong_table_cannot_complete_a_wrong_layer(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """Every chunk matches the lying root's table, so only the whole-layer digest can tell:
    the first reader is cut before its last bytes (integrity), the root is distrusted for
    the layer, and the next pull — the client's retry — comes from the registry, right."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(5 * CHUNK + 9))
        liar = FakeRoot(blob, size=blob.size, wrong_bytes=True)
        agent = await swarm.agent(await liar.start(nursery))
        received = await read_until_cut(agent, registry, blob, "hash to")
        assert len(received) < blob.size, "the last bytes wait for the whole-layer digest"
        assert agent.data.cache.get(blob.digest) is None
        assert blob.gets == []
        asked = liar.plans
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert agent.swarm is not None and agent.swarm.fallbacks == {"no_root": 1}
        assert blob.gets == [None] and liar.plans == asked  # not asked again


async def test_a_root_that_never_seals_costs_the_agent_one_whole_layer_pass_at_the_end(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """The agent waits for a seal instead of hashing chunks a second time as they come; a root
    that never sends one (right bytes, no seal) leaves the whole-layer pass for the end, from
    the disk: the pull completes, every byte hashed once more, and nothing came from the
    registry."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(5 * CHUNK + 9))
        honest = FakeRoot(blob, size=blob.size, wrong_bytes=False)
        agent = await swarm.agent(await honest.start(nursery))
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert agent.swarm is not None
        assert (agent.swarm.sealed, agent.swarm.rehashed_bytes) == (0, blob.size)
        assert agent.swarm.fallbacks == {} and blob.gets == []


async def test_a_ring_whose_root_fails_midway_finishes_from_the_registry(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """A layer three times the agent's ring: the root serves 40 of its 48 chunks, then fails.
    The agent goes to the registry from the start of the layer; the chunks its ring already
    let go (its reader is past them) are not written back (it waited forever for a slot that
    only a reader past them could free)."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(48 * CHUNK + 9))
        root = FakeRoot(blob, size=blob.size, wrong_bytes=False, fail_after_chunks=40)
        agent = await swarm.agent(await root.start(nursery), CACHE_CAPACITY=32 * CHUNK)
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert agent.swarm is not None and agent.swarm.fallbacks == {"root_error": 1}
        assert root.chunks >= 40 and blob.gets == [None]


async def test_a_seal_that_does_not_match_the_chunks_held_cuts_the_reader(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """A root seals the layer (the agent then skips its whole-layer pass) with a table digest
    that is not the table of the chunks it served: the agent compares before the last bytes,
    cuts its reader, distrusts the root, and the next pull comes from the registry."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(os.urandom(5 * CHUNK + 9))
        liar = FakeRoot(blob, size=blob.size, wrong_bytes=False, seal="ab" * 32)
        agent = await swarm.agent(await liar.start(nursery))
        received = await read_until_cut(agent, registry, blob, "sealed-table-mismatch")
        assert len(received) < blob.size, "the last bytes wait for the seal's check"
        assert await pull(agent, registry, blob, size=blob.size) == blob.data
        assert agent.swarm is not None and agent.swarm.sealed == 0


async def test_a_404_from_the_registry_through_the_root_stays_the_clients(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A layer the registry does not have is 404 through the swarm too: not a fallback."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        missing = FakeBlob(data=b"never pushed", digest="sha256:" + "0" * 64)
        with pytest.raises(RegistryError) as caught:
            await pull(agent, registry, missing)
        assert caught.value.status == 404
        assert agent.swarm is not None and agent.swarm.fallbacks == {}
