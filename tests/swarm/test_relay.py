"""Cut-through at the P2P port: a chunk in its last bytes here is relayed, its bytes in so far
at once and the rest once it is verified, from the same buffer, or the response is cut.

The cache and the layer download are stood in for by fakes (the port asks them three
questions: the bytes in so far, whether the chunk landed, and the verified chunk in memory);
the in-process swarm tests (test_peers.py) run the real ones."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio

from agent.cache.chunks import ChunkLayout
from agent.http.responses import Response
from agent.swarm.protocol import ChunkTarget
from agent.swarm.server import P2PService

CHUNK = 64 * 1024
DIGEST = "sha256:" + "ab" * 32


@dataclass
class FakeEntry:
    digest: str = DIGEST
    size: int = 4 * CHUNK
    layout: ChunkLayout = field(
        default_factory=lambda: ChunkLayout(size=4 * CHUNK, chunk_size=CHUNK)
    )
    dropped: bool = False

    def has_chunk(self, index: int) -> bool:
        return False


@dataclass
class FakeCache:
    entry: FakeEntry = field(default_factory=FakeEntry)
    pins: int = 0

    def peek(self, digest: str) -> FakeEntry | None:
        return self.entry if digest == DIGEST else None

    def pin(self, entry: FakeEntry) -> None:
        self.pins += 1

    def unpin(self, entry: FakeEntry) -> None:
        self.pins -= 1


class Landing:
    """Chunk 1 arriving in `buffer`, `filled` bytes in so far; `land(verified)` ends it."""

    def __init__(self, filled: int) -> None:
        self.buffer = memoryview(bytearray(os.urandom(CHUNK)))
        self.filled = filled
        self.hot: memoryview | None = None
        self.done = trio.Event()

    def arriving(self, entry: FakeEntry, index: int) -> memoryview | None:
        return self.buffer[: self.filled] if index == 1 and not self.done.is_set() else None

    async def wait_landed(self, entry: FakeEntry, index: int) -> bool:
        await self.done.wait()
        return self.hot is not None

    def hot_chunk(self, entry: FakeEntry, index: int) -> memoryview | None:
        return self.hot

    def land(self, hot: memoryview | None) -> None:
        self.hot = hot
        self.done.set()


def service(landing: Landing, cache: FakeCache) -> P2PService:
    return P2PService(
        token=b"t",
        cache=cache,  # type: ignore[arg-type]
        plan_handler=None,
        hot_chunk=landing.hot_chunk,  # type: ignore[arg-type]
        wait_landed=landing.wait_landed,  # type: ignore[arg-type]
        arriving=landing.arriving,  # type: ignore[arg-type]
    )


async def chunk_response(p2p: P2PService) -> Response:
    return await p2p._chunk("GET", ChunkTarget(digest=DIGEST, index=1))


async def test_the_bytes_in_so_far_go_at_once_and_the_rest_once_verified() -> None:
    landing, cache = Landing(filled=CHUNK - 1000), FakeCache()
    p2p = service(landing, cache)
    with trio.fail_after(5):
        response = await chunk_response(p2p)
        assert response.status == 200
        assert (b"content-length", str(CHUNK).encode()) in response.headers
        assert not isinstance(response.body, bytes)
        body: AsyncIterator[memoryview] = response.body  # type: ignore[assignment]
        first = await body.__anext__()
        assert bytes(first) == bytes(landing.buffer[: CHUNK - 1000])  # before it landed
        landing.land(landing.buffer)  # verified, in memory: the same buffer
        rest = await body.__anext__()
        assert bytes(first) + bytes(rest) == bytes(landing.buffer)
        with pytest.raises(StopAsyncIteration):
            await body.__anext__()
    assert p2p.relayed == 1 and p2p.chunks_served == 1 and cache.pins == 0


@pytest.mark.parametrize("hot", ["another copy", "none"])
async def test_a_relay_whose_copy_did_not_land_is_cut(hot: str) -> None:
    """The copy whose prefix went lost to another (the endgame), or failed its check: the
    rest of another buffer must not follow it (bad bytes would ban this node at the asker)."""
    landing, cache = Landing(filled=CHUNK // 2), FakeCache()
    p2p = service(landing, cache)
    with trio.fail_after(5):
        response = await chunk_response(p2p)
        body: AsyncIterator[memoryview] = response.body  # type: ignore[assignment]
        await body.__anext__()
        landing.land(memoryview(bytes(landing.buffer)) if hot == "another copy" else None)
        with pytest.raises(ConnectionAbortedError):
            await body.__anext__()
    assert p2p.relayed == 0 and p2p.chunks_served == 0 and cache.pins == 0


async def test_a_chunk_not_on_its_way_is_not_found() -> None:
    landing, cache = Landing(filled=CHUNK // 2), FakeCache()
    landing.land(None)
    response = await chunk_response(service(landing, cache))
    assert response.status == 404
