"""Nodes of a swarm in one process, on loopback: a root and agents, wired as the daemon does.

The root runs a `Tracker` and a `P2PService` on an `HttpServer`, with its own fetcher and
cache pointed at an in-process registry; an agent runs a `P2PClient` and a fetcher with a
`SwarmContext`. These tests hold the P2P port to its promises: a layer reaches agents through
the root with one trip to the origin, an unsigned or wrongly signed request gets 401 and no
data, a chunk the node does not hold is 404, and a plan request reaches the tracker and comes
back with the chunk table.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

import agent.fetch.download as download_module
import agent.swarm.tracker as tracker_module
from agent.cache.checksums import new_chunk_checksum
from agent.cache.native import buffer_pool
from agent.cache.store import CacheEntry
from agent.core.config import Config
from agent.fetch.download import LayerDownload
from agent.fetch.fetcher import LANDING_WAIT
from agent.fetch.hotchunks import KEEP
from agent.fetch.model import LayerCorrupt
from agent.fetch.readers import BlobSource
from agent.http.client import HttpClient
from agent.http.responses import Response
from agent.http.server import HttpServer, ServerSettings, listener_port, open_listeners
from agent.registry.routes import parse_digest
from agent.swarm.client import P2PClient, PeerError
from agent.swarm.download import SwarmContext
from agent.swarm.handoffstore import FILE_NAME, HandoffStore
from agent.swarm.ownership import HANDOFF_MIN_CHUNKS, Fetching, rendezvous_order
from agent.swarm.plan import Plan
from agent.swarm.preheater import Preheater
from agent.swarm.protocol import ChunkTarget, PlanTarget
from agent.swarm.roots import RootSet
from agent.swarm.schedule import LayerSchedule
from agent.swarm.server import P2PService
from agent.swarm.signing import request_headers
from agent.swarm.tracker import RootLayer, Tracker
from tests.fakes import (
    DataPath,
    FakeBlob,
    FakeRegistry,
    as_bytes,
    node_config,
    plain_http_client,
    serve,
)

REPO = "library/app"
CHUNK = 16 * 1024
MiB = 1024 * 1024
TOKEN = "cluster-secret"
TIMEOUT = 20  # seconds; each test takes a fraction of that


@dataclass(eq=False, kw_only=True)
class Peer:
    """One node: its data path, its P2P port's application, and (on a root) its tracker."""

    node: str  # nodeIP:p2pPort, as peers and roots name it
    data: DataPath
    service: P2PService
    tracker: Tracker | None = None
    preheater: Preheater | None = None
    swarm: SwarmContext | None = None


class Swarm:
    """Starts roots and agents in the test's nursery, each on its own loopback P2P port."""

    def __init__(self, nursery: trio.Nursery, registry: FakeRegistry, tmp_path: Path) -> None:
        self._nursery = nursery
        self._registry = registry
        self._tmp_path = tmp_path
        self._serial = 0
        self._clients: list[HttpClient] = []  # closed at teardown: pooled connections

    async def _listen(self) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], str]:
        listeners = await open_listeners("127.0.0.1", 0, None)
        return listeners, f"127.0.0.1:{listener_port(listeners)}"

    def _config(self, node: str, **env: str | int) -> Config:
        self._serial += 1
        return node_config(
            self._tmp_path / f"node{self._serial}",
            self._registry,
            CLUSTER_TOKEN=TOKEN,
            P2P_PORT=node.rpartition(":")[2],
            **{"CACHE_CHUNK_SIZE": CHUNK, **env},
        )

    async def _serve(self, peer: Peer, listeners: list[trio.abc.Listener[trio.abc.Stream]]) -> None:
        server = HttpServer(peer.service.handle, ServerSettings(), name=f"p2p {peer.node}")
        self._clients.append(peer.data.http)
        await self._nursery.start(serve, server, listeners)

    async def aclose(self) -> None:
        """Close the nodes' pooled connections (the nursery's cancellation stops the rest)."""
        for http in self._clients:
            await http.aclose()

    def _client(self, node: str) -> P2PClient:
        p2p_http = plain_http_client(30.0)
        self._clients.append(p2p_http)
        return P2PClient(p2p_http, token=TOKEN.encode(), node=node, tls=False)

    async def root(self, *others: Peer, **env: str | int) -> Peer:
        """A root; with `others`, one whose own client pulls through the roots `others` and
        itself, as the daemon wires a root that lists the roots (its tracker knows them too)."""
        listeners, node = await self._listen()
        swarm: SwarmContext | None = None
        root_set: RootSet | None = None
        if others:
            env["ROOTS"] = ",".join([*(p.node for p in others), node])
        config = self._config(node, MODE="root", **env)
        if others:
            root_set = RootSet(config.roots, p2p_port=config.p2p_port)
            swarm = SwarmContext(node=node, roots=root_set, client=self._client(node))
        data = DataPath.build(config, swarm=swarm, root=True)
        tracker = Tracker(
            node=node,
            config=config,
            fetcher=data.fetcher,
            cache=data.cache,
            roots=root_set,
            handoff_store=HandoffStore(Path(config.cache_path)),
        )
        if swarm is not None:
            swarm.handed_to = tracker.handed_to
        preheater = Preheater(upstreams=config.upstreams, fetcher=data.fetcher, cache=data.cache)
        service = P2PService(
            token=TOKEN.encode(),
            cache=data.cache,
            plan_handler=tracker.plan,
            preheat_handler=preheater.preheat,
            hot_chunk=data.fetcher.hot_chunk,
        )
        peer = Peer(
            node=node, data=data, service=service, tracker=tracker, preheater=preheater, swarm=swarm
        )
        if root_set is not None:
            await self._nursery.start(root_set.run)
        await self._nursery.start(data.fetcher.run)
        await self._nursery.start(tracker.run)
        await self._serve(peer, listeners)
        return peer

    async def agent(self, *roots: Peer | str, **env: str | int) -> Peer:
        listeners, node = await self._listen()
        names = [r if isinstance(r, str) else r.node for r in roots]
        config = self._config(node, ROOTS=",".join(names), **env)
        root_set = RootSet(config.roots, p2p_port=config.p2p_port)
        swarm = SwarmContext(node=node, roots=root_set, client=self._client(node))
        data = DataPath.build(config, swarm=swarm)
        service = P2PService(
            token=TOKEN.encode(),
            cache=data.cache,
            plan_handler=None,
            hot_chunk=data.fetcher.hot_chunk,
            wait_landed=data.fetcher.wait_landed,
        )
        peer = Peer(node=node, data=data, service=service, swarm=swarm)
        await self._nursery.start(root_set.run)
        await self._nursery.start(data.fetcher.run)
        await self._serve(peer, listeners)
        return peer


@pytest.fixture
async def registry(nursery: trio.Nursery) -> FakeRegistry:
    fake = FakeRegistry()
    await nursery.start(fake.run)
    return fake


@pytest.fixture
async def swarm(registry: FakeRegistry, tmp_path: Path) -> AsyncIterator[Swarm]:
    """The nodes run in a nursery of their own, stopped before their pooled connections are
    closed: a download still running in the background (a reader left early) must not find
    its connection closed under it."""
    async with trio.open_nursery() as own:
        nodes = Swarm(own, registry, tmp_path)
        yield nodes
        own.cancel_scope.cancel()
    await nodes.aclose()


@pytest.fixture
async def p2p_http() -> AsyncIterator[HttpClient]:
    """A bare HTTP client, for requests the P2P client would never send."""
    http = plain_http_client(5.0)
    yield http
    await http.aclose()


async def pull(
    peer: Peer, registry: FakeRegistry, blob: FakeBlob, *, size: int | None = None
) -> bytes:
    """What a client of `peer`'s proxy port would receive for the layer (`size`: what the
    registry's HEAD said, as the proxy's auth check passes it on)."""
    source = await peer.data.fetcher.open(
        upstream=registry.upstream,
        repo=REPO,
        digest=parse_digest(blob.digest),
        headers=[],
        size=size,
    )
    parts: list[bytes] = []
    try:
        async with aclosing(source.read(0, source.size)) as pieces:
            async for piece in pieces:
                parts.append(bytes(as_bytes(piece)))
    finally:
        source.close()
    return b"".join(parts)


async def pull_everywhere(
    agents: list[Peer], registry: FakeRegistry, blob: FakeBlob
) -> dict[str, bytes]:
    """Every agent pulls the layer at once; what each one's client received."""
    results: dict[str, bytes] = {}

    async def pull_into(agent: Peer) -> None:
        results[agent.node] = await pull(agent, registry, blob)

    async with trio.open_nursery() as pulls:
        for agent in agents:
            pulls.start_soon(pull_into, agent)
    return results


def plan_request(registry: FakeRegistry, blob: FakeBlob, **fields: object) -> PlanTarget:
    return PlanTarget(
        digest=blob.digest,
        upstream=registry.upstream.key,
        repo=REPO,
        **fields,  # type: ignore[arg-type]
    )


def chunk_of(blob: FakeBlob, index: int) -> bytes:
    return blob.data[index * CHUNK : (index + 1) * CHUNK]


def damage_chunk_1(entry: CacheEntry) -> None:
    """Overwrite 16 bytes of chunk 1 in the cache file (its checksum no longer matches)."""
    fd = os.open(entry.data_path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * 16, entry.file_offset(1) + 100)
    finally:
        os.close(fd)


async def test_agent_gets_the_layer_through_the_root_with_one_origin_get(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The agent's pull goes to the layer's owning root; the root alone asks the origin, and
    every byte the agent caches came over the P2P port, checked against the root's table."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(10 * CHUNK + 321))
        assert await pull(agent, registry, blob) == blob.data
        assert blob.gets == [None], "the root's GET is the cluster's only one"
        assert agent.swarm is not None
        assert agent.swarm.fallbacks == {}
        assert agent.swarm.peer_bytes == blob.size
        assert (root.service.chunks_served, root.service.bytes_served) == (11, blob.size)
        entry = agent.data.cache.get(blob.digest)
        assert entry is not None and entry.verified
        root_entry = root.data.cache.get(blob.digest)
        assert (
            root_entry is not None
            and root_entry.sha256[3] == hashlib.sha256(chunk_of(blob, 3)).hexdigest()
        )
        # Warm on the agent now: served from its own cache, nobody asked.
        assert await pull(agent, registry, blob) == blob.data
        assert root.service.chunks_served == 11 and blob.gets == [None]


async def test_a_layers_head_crosses_the_swarm_in_small_chunks(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """With 2 MiB chunks a layer's first 8 are 1 MiB (agent.cache.chunks): the root's table,
    its plans and the agent's transfers number them alike, and the bytes are the layer's."""
    big = {"CACHE_CHUNK_SIZE": 2 * MiB, "CACHE_CAPACITY": 64 * MiB}
    with trio.fail_after(TIMEOUT):
        root = await swarm.root(**big)
        agent = await swarm.agent(root, **big)
        blob = registry.add(os.urandom(11 * MiB + 5))  # 8 x 1 MiB, 2 MiB, 1 MiB + 5
        assert await pull(agent, registry, blob) == blob.data
        assert agent.swarm is not None and agent.swarm.fallbacks == {}
        assert agent.swarm.peer_bytes == blob.size
        assert root.service.chunks_served == 10
        entry = root.data.cache.get(blob.digest)
        assert entry is not None and entry.layout.lengths() == [MiB] * 8 + [2 * MiB, MiB + 5]
        assert entry.sha256[8] == hashlib.sha256(blob.data[8 * MiB : 10 * MiB]).hexdigest()
        held = agent.data.cache.get(blob.digest)
        assert held is not None and held.verified and held.layout == entry.layout


async def test_an_agent_trusts_the_seal_of_a_root_that_verified_the_layer(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Once the root has verified the layer, its plans carry a seal (the digest of the chunk
    table, in a signed reply): an agent checks each chunk against the table and, instead of
    hashing the whole layer again, that the table of its chunks is the sealed one."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        first, second = await swarm.agent(root), await swarm.agent(root)
        blob = registry.add(os.urandom(12 * CHUNK + 77))
        assert await pull(first, registry, blob) == blob.data  # the root verified it meanwhile
        assert await pull(second, registry, blob) == blob.data
        assert second.swarm is not None and second.swarm.sealed == 1
        entry = second.data.cache.get(blob.digest)
        assert entry is not None and entry.verified
        assert blob.gets == [None]


async def test_chunks_that_came_before_the_seal_are_not_hashed_a_second_time(
    swarm: Swarm, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    """The root's own download stalls halfway, so the agent gets the first chunks before the
    root has verified the layer; the seal comes later, and covers those chunks too: the agent
    hashes no byte a second time (one sha256 pass per byte)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(12 * CHUNK + 77), pause_at=6 * CHUNK + 5)
        pulled: list[bytes] = []

        async def pull_in_background() -> None:
            pulled.append(await pull(agent, registry, blob))

        nursery.start_soon(pull_in_background)
        while root.service.chunks_served < 6:  # the agent holds what the root has so far
            await trio.sleep(0.01)
        blob.resume.set()
        while not pulled:
            await trio.sleep(0.01)
        assert pulled == [blob.data]
        assert agent.swarm is not None
        assert (agent.swarm.sealed, agent.swarm.rehashed_bytes) == (1, 0)


async def test_two_agents_share_a_layer_with_one_origin_get(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Two agents pulling one layer at once through one root: both get it whole, the origin
    sees one GET, and each agent stored every byte once, from the root or the other agent."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agents = [await swarm.agent(root), await swarm.agent(root)]
        blob = registry.add(os.urandom(24 * CHUNK + 5))
        results = await pull_everywhere(agents, registry, blob)
        assert results == {a.node: blob.data for a in agents}
        assert blob.gets == [None]
        served = root.service.chunks_served + sum(a.service.chunks_served for a in agents)
        assert served >= 2 * 25, "each agent received all 25 chunks from the root or a peer"
        for agent in agents:
            assert agent.swarm is not None
            assert (agent.swarm.fallbacks, agent.swarm.peer_bytes) == ({}, blob.size)


async def test_an_o_direct_cache_serves_peers_checked_chunks_from_memory(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """With cache.aioEnable a node's chunks are not in the page cache: it reads a chunk a peer
    asks for straight into memory (O_DIRECT), checks it against its xxh3 and sends it. A
    chunk damaged on disk is never sent: the peer's read is cut and the layer dropped."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root(CACHE_AIO_ENABLE=1)
        assert root.data.cache.direct
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(3 * CHUNK + 7))
        assert await pull(agent, registry, blob) == blob.data
        assert root.service.chunks_served >= 1  # the agent's chunks came from the root
        entry = root.data.cache.peek(blob.digest)
        assert entry is not None and entry.verified
        damage_chunk_1(entry)
        assert agent.swarm is not None
        buffer = bytearray(CHUNK)
        with pytest.raises(PeerError):
            await agent.swarm.client.fetch_chunk(
                root.node, blob.digest, 1, CHUNK, into=memoryview(buffer)
            )
        assert chunk_of(blob, 1)[100:116] != b"\xff" * 16
        assert root.data.cache.peek(blob.digest) is None  # dropped: fetched again if asked


async def test_a_chunk_that_just_arrived_is_served_to_peers_from_memory(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A chunk a download still holds in memory (it just arrived: peers are sent to a new
    holder at once) goes to a peer from there, with no disk read. Shown by damaging the cache
    file under it: the peer still gets the right bytes, and the layer is not dropped."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root(CACHE_AIO_ENABLE=1)
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(4 * CHUNK), pause_at=2 * CHUNK + 7)
        async with trio.open_nursery() as nursery:
            pulled = start_pull(nursery, agent, registry, blob)
            while (entry := root.data.cache.peek(blob.digest)) is None or not entry.has_chunk(1):
                await trio.sleep(0.01)
            damage_chunk_1(entry)
            assert agent.swarm is not None
            buffer = bytearray(CHUNK)
            await agent.swarm.client.fetch_chunk(
                root.node, blob.digest, 1, CHUNK, into=memoryview(buffer)
            )
            assert bytes(buffer) == chunk_of(blob, 1)
            assert root.service.served_from_memory >= 1
            assert root.data.cache.peek(blob.digest) is entry  # not dropped
            blob.resume.set()
        assert pulled == [blob.data]


async def test_chunks_that_came_out_of_order_leave_memory_once_on_disk(
    swarm: Swarm, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swarm download's chunks come in any order. A chunk on disk leaves memory once newer
    ones came, whether or not the chunks below it are in yet: a download keeps a few chunks in
    memory, not the whole stretch above its first gap (which was most of a layer, and the
    agent's page faults on a first pull: fresh memory for every chunk). The reader and the
    whole-layer pass read the rest from the disk. Shown with a swarm download that delivers
    the layer last chunk first: the client still gets every byte."""
    blob = registry.add(os.urandom(12 * CHUNK + 5))
    peak: list[int] = []

    class Backwards:
        answered_by = None

        def __init__(self, *, sink: LayerDownload, **_: object) -> None:
            self.sink = sink

        async def run(self) -> str:
            sink = self.sink
            sink.begin(blob.size)
            layout = sink.layout
            for i in reversed(range(layout.count)):
                data = blob.data[layout.offset(i) : layout.offset(i) + layout.length(i)]
                buffer = sink.new_buffer(len(data))
                buffer[:] = data
                checksum = new_chunk_checksum()
                checksum.update(data)
                sha = hashlib.sha256(data).hexdigest()
                await sink.emit(i, buffer, sha, checksum.intdigest())
                await sink.wait_written(i)
                peak.append(sum(sink.hot_chunk(j) is not None for j in range(layout.count)))
            sink.hashed(layout.count)
            return hashlib.sha256(blob.data).hexdigest()

    monkeypatch.setattr(download_module, "SwarmDownload", Backwards)
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert await pull(agent, registry, blob) == blob.data
    assert len(peak) == 13 and max(peak) <= KEEP


async def test_a_finished_download_hands_its_chunks_back_to_the_buffer_pool(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A root's tracker keeps a layer's download for as long as it tracks the layer, and a
    finished download lives on until the garbage collector breaks its reference cycles. The
    chunks it kept in memory for readers close behind go back to the buffer pool when it ends
    (the layer is on disk), so the next pull recycles them instead of faulting in fresh memory.
    The collector is off here: only the downloads' own release counts."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        in_use = buffer_pool.in_use_bytes
        gc.disable()
        try:
            for _ in range(2):
                blob = registry.add(os.urandom(12 * CHUNK + 5))
                assert await pull(agent, registry, blob) == blob.data
                assert buffer_pool.in_use_bytes == in_use
        finally:
            gc.enable()
        layer = root.tracker._layers[blob.digest] if root.tracker else None
        assert layer is not None and layer.download is not None and layer.download.verified


async def test_an_assignment_wakes_only_the_standing_request_it_is_for(
    swarm: Swarm, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty agents hold standing requests while the root's download has nothing yet; when
    its first chunk lands, the one agent assigned it is woken, not all thirty (waking every
    held request for every assignment made a root's work per event grow with the cluster)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        tracker = root.tracker
        assert tracker is not None
        tracker.root_upload_slots = 1  # one chunk's first copy at a time: one asker to wake
        blob = registry.add(os.urandom(4 * CHUNK), pause_at=CHUNK // 2)
        looked: list[str] = []
        deliverable = tracker._deliverable

        def counting(layer: RootLayer, node: str) -> list[tuple[int, str]]:
            looked.append(node)
            return deliverable(layer, node)

        monkeypatch.setattr(tracker, "_deliverable", counting)
        askers = [f"127.0.0.{i}:7000" for i in range(2, 32)]
        answered: list[str] = []

        async def ask(asker: str) -> None:
            request = plan_request(registry, blob, want=1, poll=True)
            await tracker.plan(asker, request, None)
            answered.append(asker)

        async with trio.open_nursery() as nursery:
            for asker in askers:
                nursery.start_soon(ask, asker)
            layer = None
            while layer is None or len(layer.standing) < len(askers):
                await trio.sleep(0.01)
                layer = tracker._layers.get(blob.digest)
            looked.clear()
            blob.resume.set()
            while not answered:
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()  # anything else woken has looked
            nursery.cancel_scope.cancel()
        assert len(answered) == 1
        assert set(looked) == set(answered), looked


async def test_a_root_sends_two_first_copies_at_once(swarm: Swarm, registry: FakeRegistry) -> None:
    """The root's link is the one every byte crosses once; a transfer rarely has its receiver's
    link to itself, so the root keeps two going (`Tracker.root_upload_slots`): two agents
    asking at once both get a chunk from the root."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        tracker = root.tracker
        assert tracker is not None
        blob = registry.add(os.urandom(8 * CHUNK))
        assert await pull(root, registry, blob) == blob.data  # the root holds it all
        plans = [
            await tracker.plan(asker, plan_request(registry, blob, want=1), None)
            for asker in ("127.0.0.2:7000", "127.0.0.3:7000")
        ]
        assert [[src for _, src in p.assignments] for p in plans] == [[root.node], [root.node]]


@pytest.mark.parametrize("token", [b"not-the-cluster-token", None], ids=["wrong", "unsigned"])
async def test_request_without_the_cluster_token_gets_401_and_no_data(
    swarm: Swarm, registry: FakeRegistry, p2p_http: HttpClient, token: bytes | None
) -> None:
    """A chunk the root holds, asked for with a bad signature (or none): 401, a body without
    the chunk's bytes; a plan asked for that way never reaches the tracker (no GET)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        held = registry.add(os.urandom(3 * CHUNK))
        assert await pull(agent, registry, held) == held.data
        served = root.service.chunks_served
        fresh = registry.add(os.urandom(2 * CHUNK))
        assert root.tracker is not None
        plans = root.tracker.plans_answered
        for target in (
            ChunkTarget(digest=held.digest, index=1).target(),
            plan_request(registry, fresh, want=2).target(),
        ):
            headers = (
                request_headers(token, agent.node, "GET", target, time.time()) if token else []
            )
            url = f"http://{root.node}{target}"
            async with p2p_http.request("GET", url, headers) as response:
                body = await response.read_all(1 << 20)
            assert response.status == 401, target
            assert chunk_of(held, 1)[:64] not in body and len(body) < 200
        assert root.service.refused == 2
        assert root.service.chunks_served == served
        assert root.tracker.plans_answered == plans
        assert fresh.gets == []
        # The real client, with the wrong token, sees the refusal as a 401 and fills nothing.
        wrong = P2PClient(p2p_http, token=b"wrong", node=agent.node, tls=False)
        buffer = bytearray(CHUNK)
        with pytest.raises(PeerError) as refused:
            await wrong.fetch_chunk(root.node, held.digest, 1, CHUNK, into=memoryview(buffer))
        assert refused.value.status == 401
        assert buffer == bytearray(CHUNK)


async def test_a_ring_chunk_sent_and_unread_keeps_its_bytes_when_its_slot_takes_another(
    swarm: Swarm,
) -> None:
    """Found under load (an honest peer banned for "a bad chunk"): sendfile queues references
    to the cache file's pages, not copies, and a ring writes the next chunk into a passed
    chunk's slot in place. Chunk 1 goes to a peer that has not read it yet; the slot then
    takes chunk 5; the peer must still read chunk 1's bytes (with sendfile it read chunk 5's)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root, CACHE_CAPACITY=16 * CHUNK)
        cache = agent.data.cache
        one, five = os.urandom(CHUNK), os.urandom(CHUNK)
        digest = "sha256:" + hashlib.sha256(b"a ring layer").hexdigest()
        entry = cache.admit(digest, 8 * CHUNK, slots=4)
        assert entry is not None and not cache.direct
        await cache.write_chunk(entry, 1, one, hashlib.sha256(one).hexdigest())
        target = ChunkTarget(digest=digest, index=1).target()
        host, port = agent.node.rsplit(":", 1)
        headers = [(b"host", agent.node.encode()), (b"connection", b"close")]
        headers += request_headers(TOKEN.encode(), "127.0.0.1:1", "GET", target, time.time())
        head = f"GET {target} HTTP/1.1\r\n".encode()
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
        stream = await trio.open_tcp_stream(host, int(port))
        served = agent.service.chunks_served
        await stream.send_all(head)
        while agent.service.chunks_served == served:  # sent whole, not read by us yet
            await trio.sleep(0.01)
        cache.release_chunk(entry, 1)  # the ring's readers are past it
        await cache.write_chunk(entry, 5, five, hashlib.sha256(five).hexdigest())
        response = b""
        while data := await stream.receive_some(1 << 20):
            response += data
        await stream.aclose()
        status, _, body = response.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), status
        assert body == one, "the peer got the slot's next chunk"


async def test_chunk_the_node_does_not_hold_gets_404(swarm: Swarm, registry: FakeRegistry) -> None:
    """Midway through the root's own download: a chunk it has stored is served, one still to
    come is 404 (the asker goes elsewhere), as are a layer it never saw, a chunk past the
    layer's end, and any plan asked of a node that is not a root."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert agent.swarm is not None
        client = agent.swarm.client
        blob = registry.add(os.urandom(8 * CHUNK), pause_at=2 * CHUNK + 100)
        stranger = registry.add(os.urandom(CHUNK))
        # A plan that does not wait starts the root's download of the layer.
        await client.plan(root.node, plan_request(registry, blob, want=0), None)
        while (entry := root.data.cache.peek(blob.digest)) is None or not entry.has_chunk(1):
            await trio.sleep(0.01)  # the body is paused inside chunk 2: 0 and 1 get written
        assert not entry.has_chunk(2)

        buffer = bytearray(CHUNK)
        heard: list[int] = []

        async def progress(filled: int) -> None:
            heard.append(filled)

        await client.fetch_chunk(
            root.node, blob.digest, 1, CHUNK, into=memoryview(buffer), progress=progress
        )
        assert buffer == chunk_of(blob, 1)
        assert heard and heard == sorted(heard) and heard[-1] == CHUNK  # what the pipelining reads
        for digest, index in ((blob.digest, 5), (stranger.digest, 0), (blob.digest, 8)):
            with pytest.raises(PeerError) as missing:
                await client.fetch_chunk(root.node, digest, index, CHUNK, into=memoryview(buffer))
            assert missing.value.status == 404, (digest, index)
        assert buffer == chunk_of(blob, 1), "a 404 fills nothing"
        with pytest.raises(PeerError) as not_root:
            await client.plan(agent.node, plan_request(registry, blob, want=1), None)
        assert not_root.value.status == 404
        blob.resume.set()


async def test_plan_reaches_the_tracker_and_returns_the_chunk_table(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """An agent's first plan request makes the root fetch the layer (one GET) and answers with
    the layer's size, the chunk size, assignments from the root, and the sha256 of every
    assigned chunk; a registry outside the root's upstreams is refused in the plan."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        assert agent.swarm is not None and root.tracker is not None
        client = agent.swarm.client
        blob = registry.add(os.urandom(6 * CHUNK + 10))
        request = plan_request(registry, blob, want=2, have=frozenset(), poll=True)
        plan = await client.plan(root.node, request, None)
        assert plan.error is None
        assert (plan.size, plan.chunk_size) == (blob.size, CHUNK)
        assert plan.assignments, "the root assigns chunks it holds"
        for chunk, source in plan.assignments:
            assert source == root.node
            assert plan.chunk_sha256[chunk] == hashlib.sha256(chunk_of(blob, chunk)).hexdigest()
        assert root.tracker.plans_answered == 1
        assert blob.gets == [None]
        assert blob.digest in root.tracker.statistics()["layers"]  # type: ignore[operator]

        elsewhere = PlanTarget(
            digest=blob.digest, upstream="elsewhere.example:5000", repo=REPO, want=1
        )
        refused = await client.plan(root.node, elsewhere, None)
        assert refused.error_status == 403 and not refused.assignments
        assert blob.gets == [None]


async def plan_with_size(client: P2PClient, root: Peer, request: PlanTarget) -> Plan:
    """Ask until the root's layer has started (a first answer may come without the size)."""
    while True:
        plan = await client.plan(root.node, request, None)
        if plan.size is not None:
            return plan
        await trio.sleep(plan.retry_after or 0.05)


@pytest.mark.parametrize("port_open", [False, True], ids=["port-refuses", "port-listens"])
async def test_a_root_forgets_a_failing_source_whose_port_refuses_connections(
    swarm: Swarm, registry: FakeRegistry, port_open: bool
) -> None:
    """A node that died is news to nobody but the receivers of its uploads: the root counted it
    a holder (and its downloads as running) until it had not asked for GONE_AFTER (6 s), and
    the chaos bench's other agents waited for it. A failure report about a source makes the
    root look at its port: refused, the node is forgotten at once; a port that takes
    connections (a loaded node) proves nothing."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    if not port_open:
        await listener.aclose()  # nothing listens there now: a connect is refused
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        assert root.tracker is not None
        blob = registry.add(os.urandom(2 * CHUNK))
        dead, waiter = swarm._client(f"127.0.0.1:{port}"), swarm._client("127.0.0.1:9")
        holds = plan_request(registry, blob, want=0, have=frozenset({0, 1}))
        await plan_with_size(dead, root, holds)
        asked = await plan_with_size(waiter, root, plan_request(registry, blob, want=1))
        while not asked.assignments:
            poll = plan_request(registry, blob, want=1, poll=True)
            asked = await waiter.plan(root.node, poll, None)
        assert asked.assignments == ((0, dead.node),)
        looked = trio.Event()
        look = root.tracker.liveness.gone

        async def gone(node: str) -> bool:  # the root's own look, and word that it ended
            try:
                return await look(node)
            finally:
                looked.set()

        root.tracker.liveness.gone = gone  # type: ignore[method-assign]
        failed = plan_request(registry, blob, want=1, failed=((0, dead.node, False),))
        again = await waiter.plan(root.node, failed, None)
        assert again.assignments == ((0, root.node),)  # it avoids the only holder now
        await looked.wait()  # (the forgetting follows the look's answer in the same step)
        nodes = root.tracker.statistics()["layers"][blob.digest]["nodes"]  # type: ignore[index]
        assert (dead.node in nodes) == port_open
    if port_open:
        await listener.aclose()


async def test_a_transfer_slower_than_the_chunk_timeout_but_steady_is_not_cut(
    swarm: Swarm, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A node on a slow link (the chaos bench's straggler: 2 Mbit/s, two layers at once) took
    longer than the fixed 15 s per chunk, and every such transfer was cut after most of its
    bytes had come, then fetched again: 1.5-1.7 x its link's floor. A transfer may take
    `chunk_timeout` plus its bytes at `min_chunk_rate`. Here every chunk from the source
    comes 0.4 s late, twice the (shortened) `chunk_timeout`: none is cut."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        source, slow = await swarm.agent(root), await swarm.agent(root)
        blob = registry.add(os.urandom(4 * CHUNK + 10))
        assert await pull(source, registry, blob) == blob.data
        serve_chunk = source.service._chunk

        async def late_chunk(method: str, target: ChunkTarget) -> Response:
            await trio.sleep(0.4)
            return await serve_chunk(method, target)

        source.service._chunk = late_chunk  # type: ignore[method-assign]
        assert slow.swarm is not None
        slow.swarm.chunk_timeout = 0.2
        slow.swarm.min_chunk_rate = CHUNK  # each chunk may take 0.2 + 1 s
        served = source.service.chunks_served
        with caplog.at_level(logging.INFO, logger="agent.swarm.download"):
            assert await pull(slow, registry, blob) == blob.data
        # (the root sends the rest: a source this slow loses its requests to the root)
        assert source.service.chunks_served > served, "a chunk came from the late source"
        cut = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert not cut, cut
        assert (slow.swarm.fallbacks, slow.swarm.peer_bytes) == ({}, blob.size)


def hand_off(root: Peer, blob: FakeBlob, to: str) -> None:
    """Make `root` hand `blob` to `to`, as it does while it fetches another big layer."""
    assert root.tracker is not None
    busy = Fetching("sha256:" + "0" * 64, HANDOFF_MIN_CHUNKS)
    order = [root.node, to]
    now = trio.current_time()
    handoffs = root.tracker.handoffs
    assert (
        handoffs.decide(
            blob.digest, me=root.node, order=order, held=False, fetching=[busy], now=now
        )
        == to
    )


async def test_an_agent_follows_a_handoff_to_the_root_it_names(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The layer's first root hands it off: the agent asks the root it names, saying so, and
    that root takes the layer (the cluster's one trip to the origin) though it is second in
    the layer's rendezvous order; the first root never fetches it."""
    with trio.fail_after(TIMEOUT):
        roots = {peer.node: peer for peer in (await swarm.root(), await swarm.root())}
        agent = await swarm.agent(*roots.values())
        blob = registry.add(os.urandom(6 * CHUNK + 10))
        first, second = (roots[n] for n in rendezvous_order(blob.digest, list(roots)))
        hand_off(first, blob, second.node)
        assert await pull(agent, registry, blob) == blob.data
        assert blob.gets == [None]
        assert first.tracker is not None and second.tracker is not None
        assert blob.digest in second.tracker.statistics()["layers"]  # type: ignore[operator]
        assert blob.digest not in first.tracker.statistics()["layers"]  # type: ignore[operator]
        assert agent.swarm is not None and agent.swarm.fallbacks == {}


async def test_an_agent_that_cannot_ask_the_root_named_has_the_first_root_take_the_layer(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A handoff to a root this agent does not know (or has benched): it asks the first root
    again, saying the layer was handed, and that root takes it: a handoff never costs a pull."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(6 * CHUNK + 10))
        hand_off(root, blob, "127.0.0.1:9")
        assert await pull(agent, registry, blob) == blob.data
        assert blob.gets == [None]
        assert root.tracker is not None
        assert blob.digest in root.tracker.statistics()["layers"]  # type: ignore[operator]
        assert agent.swarm is not None and agent.swarm.fallbacks == {}


async def test_a_root_handed_a_layer_fetches_it_for_its_own_client_from_the_origin(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The root a layer was handed to pulls it for its own client: it asks the first root,
    hears the layer is its own, and fetches it from the origin (its tracker, asking itself,
    would wait on its own download until the size deadline); its agents then share it."""
    with trio.fail_after(TIMEOUT):
        first = await swarm.root()
        second = await swarm.root(first)
        blob = registry.add(os.urandom(6 * CHUNK + 10))
        while rendezvous_order(blob.digest, [first.node, second.node])[0] != first.node:
            blob = registry.add(os.urandom(6 * CHUNK + 10))
        hand_off(first, blob, second.node)
        assert await pull(second, registry, blob) == blob.data
        assert blob.gets == [None]
        agent = await swarm.agent(first, second)
        assert await pull(agent, registry, blob) == blob.data
        assert blob.gets == [None]
        assert second.swarm is not None and second.swarm.fallbacks == {}


async def test_a_busy_root_hands_a_new_layer_off_and_a_restart_of_it_still_does(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A root fetching a big layer from the origin hands a new one to the next root of its
    order and writes that down; a new run of it (a tracker over the same cache directory)
    answers the same, so the first pull after a restart does not fetch the layer again."""
    with trio.fail_after(TIMEOUT):
        other = await swarm.root()
        root = await swarm.root(other)
        assert root.tracker is not None
        slow = registry.add(os.urandom(8 * CHUNK), pause_at=2 * CHUNK)
        asker = "127.0.0.9:7000"
        taken = plan_request(registry, slow, want=0, handed=True)  # taken whatever the order
        assert (await root.tracker.plan(asker, taken, None)).size == slow.size
        blob = registry.add(os.urandom(4 * CHUNK))
        while rendezvous_order(blob.digest, [root.node, other.node])[0] != root.node:
            blob = registry.add(os.urandom(4 * CHUNK))
        new = plan_request(registry, blob, want=1)
        assert (await root.tracker.plan(asker, new, None)).handoff == other.node
        assert blob.gets == []
        store = root.tracker.handoff_store
        assert store is not None
        while not store.path.exists():  # written in the background
            await trio.sleep(0.01)
        restarted = Tracker(
            node=root.node,
            config=root.tracker.config,
            fetcher=root.data.fetcher,
            cache=root.data.cache,
            roots=root.tracker.roots,
            handoff_store=HandoffStore(store.path.parent),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(restarted.run)
            assert (await restarted.plan(asker, new, None)).handoff == other.node
            nursery.cancel_scope.cancel()
        assert store.path.name == FILE_NAME and blob.gets == []
        slow.resume.set()


async def test_a_root_answers_a_bounded_number_of_nodes_per_layer(
    swarm: Swarm, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any cluster-token holder can name nodes at will, and each named node cost the root
    memory for the layer. Past MAX_NODES_PER_LAYER a new node is told to go to the origin
    (its agent counts the fallback); the nodes already there are answered as before."""
    monkeypatch.setattr(tracker_module, "MAX_NODES_PER_LAYER", 3)
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        assert root.tracker is not None
        blob = registry.add(os.urandom(2 * CHUNK))
        request = plan_request(registry, blob, want=0)
        for i in range(3):
            plan = await root.tracker.plan(f"10.9.0.{i}:65002", request, None)
            assert plan.error is None
        refused = await root.tracker.plan("10.9.0.99:65002", request, None)
        assert refused.error_status == 503 and refused.size is None
        again = await root.tracker.plan("10.9.0.1:65002", request, None)
        assert again.error is None


async def test_a_newer_standing_request_of_a_node_ends_its_older_one(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A node's long poll held at the root (it holds every chunk, so nothing is assigned) is
    answered at once, with nothing, when the same node polls again: after a restart the old
    request talks to a process that is gone, and work handed to it would be lost."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        assert root.tracker is not None
        blob = registry.add(os.urandom(4 * CHUNK))
        node = "127.0.0.9:65002"
        everything = frozenset(range(4))
        first = plan_request(registry, blob, want=1, have=everything, poll=True)
        answers: list[float] = []

        async def poll_and_time() -> None:
            started = trio.current_time()
            plan = await root.tracker.plan(node, first, None)
            assert plan.assignments == ()
            answers.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll_and_time)
            await trio.sleep(0.3)
            assert answers == [], "held: nothing to assign"
            second = plan_request(registry, blob, want=1, have=everything, poll=True, fresh=True)
            with trio.move_on_after(0.1):
                await root.tracker.plan(node, second, None)  # held in its turn
            await trio.sleep(0)
            assert len(answers) == 1 and answers[0] < 1.0, "the older poll gave way"


def test_a_transfer_cancelled_and_assigned_again_in_one_event_stays_in_the_mailbox() -> None:
    """`expire` cancels a transfer that timed out and may assign the very same one again: the
    mailbox holds what is in flight afterwards (before, it was dropped, and the node waited
    for it forever)."""
    schedule = LayerSchedule(chunk_count=2, root="root:1", transfer_timeout=1.0)
    layer = RootLayer(digest="sha256:" + "a" * 64, download=None, entry=None, schedule=schedule)
    tracker = Tracker(node="root:1", config=None, fetcher=None, cache=None)  # type: ignore[arg-type]
    schedule.origin_progress(2, now=0.0)
    tracker._deliver(layer, schedule.request("n:1", want=2, now=0.0))  # one, and a spare
    assert layer.mailbox == {"n:1": [(0, "root:1")]}
    layer.mailbox["n:1"].clear()  # handed to a request whose answer was lost
    again = schedule.expire(now=2.0)
    assert [(a.chunk, a.source) for a in again.cancelled] == [(0, "root:1")]
    assert [(a.chunk, a.source) for a in again.assigned] == [(0, "root:1")]
    tracker._deliver(layer, again)
    assert layer.mailbox == {"n:1": [(0, "root:1")]}


async def test_an_agent_resumes_a_layer_it_held_in_part_and_fetches_only_the_rest(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Chunks left by a crash (unverified, on disk, xxh3 good) count: the agent fetches only
    the other chunks through the swarm, the root learns what it holds, and the layer verifies
    whole before any client gets its last byte."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root)
        blob = registry.add(os.urandom(10 * CHUNK + 321))
        cache = agent.data.cache
        left = cache.admit(blob.digest, blob.size)  # as a killed download left it
        assert left is not None
        for index in range(5):
            await cache.write_chunk(left, index, chunk_of(blob, index), None)
        cache.unpin(left)
        assert await pull(agent, registry, blob) == blob.data
        assert root.service.chunks_served == 11 - 5
        assert agent.swarm is not None and agent.swarm.peer_bytes == blob.size - 5 * CHUNK
        entry = cache.get(blob.digest)
        assert entry is not None and entry.verified


async def test_agents_whose_caches_hold_a_third_of_the_layer_stay_in_the_swarm(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Two agents whose caches hold 16 of the layer's 48 chunks: each passes the layer
    through a ring of 16 slots behind its reader, instead of leaving the swarm for the
    registry, so the origin still sends the layer once (the root's GET). Their caches never
    hold more than their capacity, and the layer is not kept whole afterwards."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        small = {"CACHE_CAPACITY": 16 * CHUNK}
        agents = [await swarm.agent(root, **small), await swarm.agent(root, **small)]
        blob = registry.add(os.urandom(48 * CHUNK - 100))
        results = await pull_everywhere(agents, registry, blob)
        assert results == {a.node: blob.data for a in agents}
        assert blob.gets == [None], "only the root's GET: nobody left the swarm"
        for agent in agents:
            assert agent.swarm is not None and agent.swarm.fallbacks == {}
            assert agent.swarm.peer_bytes == blob.size
            assert agent.data.cache.used <= 16 * CHUNK
            assert agent.data.cache.get(blob.digest) is None  # passed through, not kept


async def test_a_late_reader_of_a_ring_reads_the_window_and_fetches_only_what_it_missed(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The first reader is 30 chunks into a layer passing through a ring of 16 slots: a second
    reader joins where the ring still keeps chunks for its readers, gets the chunks before
    from the registry in one Range request (checked against the chunk table), and the rest
    from the ring: no second whole download. Both get the right bytes."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root, CACHE_CAPACITY=16 * CHUNK)
        blob = registry.add(os.urandom(48 * CHUNK))
        first = await agent.data.fetcher.open(
            upstream=registry.upstream, repo=REPO, digest=parse_digest(blob.digest), headers=[]
        )
        head = bytearray()
        late: list[bytes] = []

        async def read_all(source: BlobSource) -> None:
            async with aclosing(source.read(0, source.size)) as pieces:
                late.append(b"".join([bytes(as_bytes(p)) async for p in pieces]))
            source.close()

        async with aclosing(first.read(0, first.size)) as pieces:
            async for piece in pieces:
                head += as_bytes(piece)
                if len(head) == 30 * CHUNK:
                    entry = agent.data.cache.peek(blob.digest)
                    assert entry is not None
                    assert agent.data.cache.held_chunks(entry).isdisjoint(range(8)), (
                        "the ring let the first chunks go"
                    )
                    break
            second = await agent.data.fetcher.open(  # joins where the first reader is
                upstream=registry.upstream, repo=REPO, digest=parse_digest(blob.digest), headers=[]
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all, second)
                async for piece in pieces:
                    head += as_bytes(piece)
        first.close()
        assert bytes(head) == blob.data and late == [blob.data]
        # The first reader sat on chunk 29 (its bytes handed out, not yet passed): the ring
        # kept chunks from 29 on, and the gap is chunks 0..28.
        assert blob.gets == [None, f"bytes=0-{29 * CHUNK - 1}"], "the root's, and the gap"


async def test_a_late_reader_never_gets_a_gap_chunk_that_fails_the_chunk_table(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """The registry now serves a flipped byte in chunk 3: the late reader's Range request
    brings chunks 0..2 to its client and stops there (LayerCorrupt), never a wrong byte."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent = await swarm.agent(root, CACHE_CAPACITY=16 * CHUNK)
        blob = registry.add(os.urandom(48 * CHUNK))
        digest = parse_digest(blob.digest)
        first = await agent.data.fetcher.open(
            upstream=registry.upstream, repo=REPO, digest=digest, headers=[]
        )
        async with aclosing(first.read(0, first.size)) as pieces:
            got = 0
            async for piece in pieces:
                got += len(piece)
                if got == 30 * CHUNK:
                    break
            blob.corrupt_at = 3 * CHUNK + 7
            second = await agent.data.fetcher.open(
                upstream=registry.upstream, repo=REPO, digest=digest, headers=[]
            )
            received = bytearray()
            with pytest.raises(LayerCorrupt):
                async with aclosing(second.read(0, second.size)) as late:
                    async for piece in late:
                        received += as_bytes(piece)
            second.close()
        first.close()
        assert bytes(received) == blob.data[: 3 * CHUNK]


async def test_a_root_whose_cache_holds_a_third_of_the_layer_still_fetches_it_once(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Root and agents with caches of 16 of the layer's 48 chunks: the root passes the layer
    through a ring too, keeping each chunk until a peer holds it, so the origin sends it about
    once (a chunk the swarm loses anyway comes back with a one-chunk Range request, counted)."""
    with trio.fail_after(TIMEOUT):
        small = {"CACHE_CAPACITY": 16 * CHUNK}
        root = await swarm.root(**small)
        agents = [await swarm.agent(root, **small) for _ in range(3)]
        blob = registry.add(os.urandom(48 * CHUNK - 100))
        results = await pull_everywhere(agents, registry, blob)
        assert results == {a.node: blob.data for a in agents}
        assert blob.gets[0] is None, "one whole GET by the root"
        refetches = blob.gets[1:]
        assert all(r is not None and r.startswith("bytes=") for r in refetches)
        assert len(refetches) <= 4, "origin bytes <= 1.10 x the layer"
        assert root.tracker is not None
        (layer,) = root.tracker.statistics()["layers"].values()  # type: ignore[attr-defined]
        assert layer["refetched"] == len(refetches)
        for node in [root, *agents]:
            assert node.data.cache.used <= 16 * CHUNK
        for agent in agents:
            assert agent.swarm is not None and agent.swarm.fallbacks == {}


async def test_rings_pass_a_layer_whose_head_is_in_small_chunks(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """As above with 2 MiB chunks, so the layer's first 8 are 1 MiB (agent.cache.chunks): its
    52 chunks pass through rings of 16 slots of 2 MiB on the root and the agents, the bytes
    come out right and no cache holds more than its capacity."""
    big = 2 * MiB
    with trio.fail_after(TIMEOUT):
        small = {"CACHE_CHUNK_SIZE": big, "CACHE_CAPACITY": 16 * big}
        root = await swarm.root(**small)
        agents = [await swarm.agent(root, **small) for _ in range(2)]
        blob = registry.add(os.urandom(48 * big - 100))
        results = await pull_everywhere(agents, registry, blob)
        assert results == {a.node: blob.data for a in agents}
        assert blob.gets[0] is None and len(blob.gets) <= 5
        for node in [root, *agents]:
            assert node.data.cache.used <= 16 * big
        for agent in agents:
            assert agent.swarm is not None and agent.swarm.fallbacks == {}
            assert agent.swarm.peer_bytes == blob.size


async def test_chunks_the_swarm_lost_are_fetched_again_with_range_requests(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """A first agent (cache of 16 chunks) pulls the whole 40-chunk layer through a root whose
    cache holds 16: afterwards neither holds chunks 0..23. A second agent then pulls: the
    first answers 404 for those chunks (not a fault: no ban, no fallback), the root fetches
    each again from the origin with a one-chunk Range request, checked against its table, and
    the second agent gets the layer whole."""
    with trio.fail_after(TIMEOUT):
        small = {"CACHE_CAPACITY": 16 * CHUNK}
        root = await swarm.root(**small)
        first = await swarm.agent(root, **small)
        blob = registry.add(os.urandom(40 * CHUNK))
        assert await pull(first, registry, blob) == blob.data
        assert blob.gets == [None]
        late = await swarm.agent(root)
        assert await pull(late, registry, blob) == blob.data
        assert late.swarm is not None and late.swarm.fallbacks == {}
        ranges = sorted(blob.gets[1:], key=lambda r: int(r.split("=")[1].split("-")[0]))
        starts = [int(r.split("=")[1].split("-")[0]) // CHUNK for r in ranges]
        assert len(set(starts)) == len(starts) and set(starts) <= set(range(24))
        assert all(
            r == f"bytes={s * CHUNK}-{(s + 1) * CHUNK - 1}"
            for r, s in zip(ranges, starts, strict=True)
        )
        assert len(starts) >= 16, "most of the chunks the ring let go came back from the origin"
        assert root.tracker is not None
        (layer,) = root.tracker.statistics()["layers"].values()  # type: ignore[attr-defined]
        assert layer["refetched"] == len(starts)


def start_pull(
    nursery: trio.Nursery, agent: Peer, registry: FakeRegistry, blob: FakeBlob
) -> list[bytes]:
    """Pull `blob` through `agent` in `nursery`; the list gets its bytes once complete."""
    pulled: list[bytes] = []

    async def pull_into() -> None:
        pulled.append(await pull(agent, registry, blob))

    nursery.start_soon(pull_into)
    return pulled


async def landing_chunk_3(agent: Peer, blob: FakeBlob) -> LayerDownload:
    """`agent`'s download of `blob` once it began, with chunk 3 marked landing by hand (as
    its `finishing` does) while the registry holds back the bytes past chunk 2."""
    while (download := agent.data.fetcher._inflight.get(blob.digest)) is None or (
        download.entry is None
    ):
        await trio.sleep(0.01)
    download.landing(3, True)
    return download


async def test_a_request_for_a_chunk_in_its_last_bytes_is_held_until_it_lands(
    swarm: Swarm, registry: FakeRegistry
) -> None:
    """Cut-through: the root counts a node as a chunk's holder from the node's `finishing`
    report, so a peer may ask for it before its last bytes are in: the P2P port holds the
    request until the chunk lands and then serves it (a 404 before, and the peer went
    elsewhere)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent, peer = await swarm.agent(root), await swarm.agent(root)
        blob = registry.add(os.urandom(4 * CHUNK), pause_at=2 * CHUNK + 7)
        async with trio.open_nursery() as nursery:
            pulled = start_pull(nursery, agent, registry, blob)
            await landing_chunk_3(agent, blob)
            assert peer.swarm is not None
            buffer = bytearray(CHUNK)

            async def resume_once_held() -> None:
                while not agent.service.waiting_for_landing:  # the request below, held
                    await trio.sleep(0.01)
                assert agent.service.waited_for_landing == 0
                blob.resume.set()

            nursery.start_soon(resume_once_held)
            await peer.swarm.client.fetch_chunk(
                agent.node, blob.digest, 3, CHUNK, into=memoryview(buffer)
            )
            assert bytes(buffer) == chunk_of(blob, 3)
            assert agent.service.waited_for_landing == 1
            assert agent.service.waiting_for_landing == 0
        assert pulled == [blob.data]


async def test_a_chunk_that_stops_coming_is_not_found(swarm: Swarm, registry: FakeRegistry) -> None:
    """A held request for a chunk whose transfer failed after its `finishing` gets 404 at once
    (the peer reports it missing and the root sends it elsewhere)."""
    with trio.fail_after(TIMEOUT):
        root = await swarm.root()
        agent, peer = await swarm.agent(root), await swarm.agent(root)
        blob = registry.add(os.urandom(4 * CHUNK), pause_at=2 * CHUNK + 7)
        async with trio.open_nursery() as nursery:
            start_pull(nursery, agent, registry, blob)
            download = await landing_chunk_3(agent, blob)
            assert peer.swarm is not None

            async def give_up_once_held() -> None:
                while not agent.service.waiting_for_landing:  # the request below, held
                    await trio.sleep(0.01)
                download.landing(3, False)

            nursery.start_soon(give_up_once_held)
            started = trio.current_time()
            with pytest.raises(PeerError, match="404"):
                await peer.swarm.client.fetch_chunk(
                    agent.node, blob.digest, 3, CHUNK, into=memoryview(bytearray(CHUNK))
                )
            assert trio.current_time() - started < LANDING_WAIT  # let go at once, not timed out
            assert agent.service.waited_for_landing == 0 and not agent.service.waiting_for_landing
            blob.resume.set()
