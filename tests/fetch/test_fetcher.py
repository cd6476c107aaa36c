"""`LayerFetcher` against an in-process registry over loopback, with a real cache on disk.

These are the data path's promises that the proxy and the swarm build on: one upstream GET
however many readers, a layer bigger than the cache still delivered in bounded memory, a
broken body resumed from the byte reached, wrong bytes never completing a response nor staying
cached, and a damaged cache file costing the reader nothing but a fresh download.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.cache.native import buffer_pool
from agent.cache.store import CacheEntry
from agent.fetch.model import LayerCorrupt, LayerFailed
from agent.fetch.readers import BlobSource, ResumingBlob
from agent.registry.routes import parse_digest
from tests.fakes import DataPath, FakeBlob, FakeRegistry, as_bytes, node_config, read_into

REPO = "library/app"
CHUNK = 16 * 1024
TIMEOUT = 20  # seconds; each test takes well under one

MakeNode = Callable[..., Awaitable[DataPath]]


@pytest.fixture
async def registry(nursery: trio.Nursery) -> FakeRegistry:
    fake = FakeRegistry()
    await nursery.start(fake.run)
    return fake


@pytest.fixture
async def make_node(
    nursery: trio.Nursery, registry: FakeRegistry, tmp_path: Path
) -> AsyncIterator[MakeNode]:
    """A node's data path with its fetcher running; `env` overrides settings (CACHE_CAPACITY)."""
    nodes: list[DataPath] = []

    async def make(cache_dir: str = "cache", **env: str | int) -> DataPath:
        config = node_config(tmp_path / cache_dir, registry, CACHE_CHUNK_SIZE=CHUNK, **env)
        node = DataPath.build(config)
        nodes.append(node)
        await nursery.start(node.fetcher.run)
        return node

    yield make
    for node in nodes:
        await node.aclose()


async def open_layer(node: DataPath, registry: FakeRegistry, blob: FakeBlob) -> BlobSource:
    return await node.fetcher.open(
        upstream=registry.upstream, repo=REPO, digest=parse_digest(blob.digest), headers=[]
    )


async def read_source(source: BlobSource, start: int = 0, end: int | None = None) -> bytes:
    """Everything a client would receive, in order; the source is closed afterwards."""
    parts: list[bytes] = []
    try:
        async with aclosing(source.read(start, source.size if end is None else end)) as pieces:
            async for piece in pieces:
                parts.append(bytes(as_bytes(piece)))
    finally:
        source.close()
    return b"".join(parts)


async def read_layer(node: DataPath, registry: FakeRegistry, blob: FakeBlob) -> bytes:
    return await read_source(await open_layer(node, registry, blob))


def layer(size: int) -> bytes:
    return os.urandom(size)


def cached_files(root: Path) -> list[Path]:
    """Layer data files anywhere under a cache directory, trash included."""
    return sorted(root.rglob("data"))


async def test_concurrent_readers_share_one_upstream_get(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """Eight readers of one layer while its download is in flight: one GET, eight full copies."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        blob = registry.add(layer(5 * CHUNK + 123), hold=trio.Event())
        results: list[bytes] = []

        async def reader() -> None:
            results.append(await read_layer(node, registry, blob))

        async with trio.open_nursery() as readers:
            for _ in range(8):
                readers.start_soon(reader)
            await blob.requested.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert len(node.fetcher.in_flight()) == 1, "every reader joined the one download"
            assert blob.hold is not None
            blob.hold.set()
        assert results == [blob.data] * 8
        assert blob.gets == [None]
        assert node.cache.get(blob.digest) is not None, "the shared download was cached"
        assert node.fetcher.in_flight() == []


async def test_layer_bigger_than_the_cache_streams_to_every_reader_in_bounded_memory(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """A 4 MiB layer through a 64 KiB cache: each joined reader gets every byte and nothing
    is written to the cache. The stream goes at the pace of its slowest reader: while one
    reader stalls, the download stops reading the origin a few chunks later, and the process
    never holds more than a few chunks (not the layer)."""
    with trio.fail_after(TIMEOUT):
        node = await make_node(CACHE_CAPACITY=4 * CHUNK)
        size = 256 * CHUNK
        blob = registry.add(layer(size), hold=trio.Event())
        digests: list[str] = []
        stalled = trio.Event()
        go_on = trio.Event()

        async def reader(slow: bool) -> None:
            # Hash as the bytes come, as a client writing to disk would: hold none of them.
            source = await open_layer(node, registry, blob)
            hasher = hashlib.sha256()
            try:
                async with aclosing(source.read(0, source.size)) as pieces:
                    async for piece in pieces:
                        hasher.update(as_bytes(piece))
                        if slow and not stalled.is_set():
                            stalled.set()
                            await go_on.wait()
            finally:
                source.close()
            digests.append("sha256:" + hasher.hexdigest())

        tracemalloc.start()
        try:
            async with trio.open_nursery() as readers:
                for slow in (False, True, False, False):
                    readers.start_soon(reader, slow)
                await blob.requested.wait()
                await trio.testing.wait_all_tasks_blocked()
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                assert blob.hold is not None
                blob.hold.set()
                await stalled.wait()
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                downloads = node.fetcher.in_flight()
                assert len(downloads) == 1, "the stream ended while a reader was stalled"
                assert downloads[0].mode == "stream"
                received_while_stalled = downloads[0].received
                go_on.set()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert digests == [blob.digest] * 4
        assert blob.gets == [None], "the readers that joined before the body shared one GET"
        assert received_while_stalled <= 8 * CHUNK, "the stream ran ahead of a stalled reader"
        assert peak < size // 4, f"streaming held {peak} bytes of a {size}-byte layer"
        assert node.cache.used == 0 and node.cache.get(blob.digest) is None
        assert cached_files(Path(node.config.cache_path)) == []


async def test_a_reader_that_stops_reading_a_stream_is_dropped_and_the_others_finish(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """One reader that stopped reading held a streamed layer for every other reader until it
    closed (issue 13: a fast reader sat at 2 MiB for 25 s). Now after slowReaderTimeout it is
    dropped: the others get the whole layer, it gets an error (its response is cut)."""
    with trio.fail_after(TIMEOUT):
        node = await make_node(CACHE_CAPACITY=4 * CHUNK, SLOW_READER_TIMEOUT="0.3s")
        blob = registry.add(layer(64 * CHUNK), hold=trio.Event())
        digests: list[str] = []
        failures: list[str] = []
        stopped = trio.Event()

        async def reader(stops: bool) -> None:
            source = await open_layer(node, registry, blob)
            hasher = hashlib.sha256()
            try:
                async with aclosing(source.read(0, source.size)) as pieces:
                    async for piece in pieces:
                        hasher.update(as_bytes(piece))
                        if stops and not stopped.is_set():
                            stopped.set()
                            await trio.sleep(2)  # a client that stopped reading, for a while
            except LayerFailed as exc:
                failures.append(str(exc))
                return
            finally:
                source.close()
            digests.append("sha256:" + hasher.hexdigest())

        async with trio.open_nursery() as readers:
            for stops in (False, True, False):
                readers.start_soon(reader, stops)
            await blob.requested.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert blob.hold is not None
            blob.hold.set()
            await stopped.wait()
            started = trio.current_time()
            while len(digests) < 2:
                await trio.sleep(0.01)
            assert trio.current_time() - started < 1.5, "the others waited for the stopped one"
        assert digests == [blob.digest] * 2
        assert len(failures) == 1 and "held the others back" in failures[0]


async def test_a_reader_arriving_after_a_stream_started_gets_a_download_of_its_own(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """A streamed layer's bytes are not kept, so a reader that comes once the body is under way
    cannot join it: it is served by a second GET, and both readers get the whole layer."""
    with trio.fail_after(TIMEOUT):
        node = await make_node(CACHE_CAPACITY=2 * CHUNK)
        blob = registry.add(layer(16 * CHUNK))
        first_piece = trio.Event()
        go_on = trio.Event()
        early: list[bytes] = []

        async def early_reader() -> None:
            source = await open_layer(node, registry, blob)
            parts: list[bytes] = []
            try:
                async with aclosing(source.read(0, source.size)) as pieces:
                    async for piece in pieces:
                        parts.append(bytes(as_bytes(piece)))
                        if not first_piece.is_set():
                            first_piece.set()
                            await go_on.wait()  # the stream waits on us meanwhile
            finally:
                source.close()
            early.append(b"".join(parts))

        async with trio.open_nursery() as readers:
            readers.start_soon(early_reader)
            await first_piece.wait()
            late = await read_layer(node, registry, blob)
            go_on.set()
        assert late == blob.data
        assert early == [blob.data]
        assert blob.gets == [None, None]


async def test_a_small_layer_sized_first_leaves_a_ring_for_a_big_one_of_the_same_pull(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """A root's cache of 32 chunks, an image of 32 and 96 chunks pulled at once, the small
    layer's size known first while the big one's is not: the small layer takes a ring and
    leaves the big one room for its own, so both stay cacheable for the swarm (admitted whole,
    the small layer filled the cache and the big one went past it: 502 for a root)."""
    with trio.fail_after(TIMEOUT):
        node = await make_node(CACHE_CAPACITY=32 * CHUNK)
        small = registry.add(layer(32 * CHUNK), pause_at=CHUNK)  # stays in flight (pinned)
        big = registry.add(layer(96 * CHUNK), hold=trio.Event())
        got: dict[str, object] = {}

        async def ensure(blob: FakeBlob) -> None:
            digest = parse_digest(blob.digest)
            got[blob.digest] = await node.fetcher.ensure(
                upstream=registry.upstream, repo=REPO, digest=digest, headers=[]
            )

        async with trio.open_nursery() as pulls:
            pulls.start_soon(ensure, big)
            await big.requested.wait()  # in flight, its size not known yet
            pulls.start_soon(ensure, small)
            await small.requested.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert small.digest in got, "the small layer was admitted"
            assert big.hold is not None
            big.hold.set()
            await trio.testing.wait_all_tasks_blocked()
            small.resume.set()
        entries = {d: getattr(download, "entry", None) for d, download in got.items()}
        assert entries[small.digest] is not None and entries[small.digest].slots == 16
        assert entries[big.digest] is not None and entries[big.digest].slots == 16


@pytest.mark.parametrize("honour_range", [True, False], ids=["206", "200-skip"])
async def test_body_broken_midway_resumes_from_the_byte_reached(
    registry: FakeRegistry, make_node: MakeNode, honour_range: bool
) -> None:
    """The origin closes the connection 40000 bytes in (mid-chunk): the download asks for
    ``bytes=40000-`` and the reader gets the right bytes, whether the origin answers the
    range with 206 or with the whole body again (200, the first bytes skipped)."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        blob = registry.add(layer(6 * CHUNK + 5), break_at=40_000, honour_range=honour_range)
        assert await read_layer(node, registry, blob) == blob.data
        assert blob.gets == [None, "bytes=40000-"]
        entry = node.cache.get(blob.digest)
        assert entry is not None and entry.verified, "the resumed layer was cached"
        assert await read_layer(node, registry, blob) == blob.data
        assert len(blob.gets) == 2


@pytest.mark.parametrize("where", ["first-chunk", "last-chunk"])
async def test_wrong_bytes_fail_the_reader_before_the_last_byte_and_are_not_cached(
    registry: FakeRegistry, make_node: MakeNode, where: str
) -> None:
    """The origin's bytes do not hash to the digest: the reader's iteration raises before the
    last byte is delivered (a client never completes a wrong layer), and no file stays in
    the cache, so the next reader asks the origin again."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        size = 4 * CHUNK + 77
        blob = registry.add(layer(size), corrupt_at=5 if where == "first-chunk" else size - 1)
        for attempt in (1, 2):
            source = await open_layer(node, registry, blob)
            received = bytearray()
            with pytest.raises(LayerCorrupt):
                await read_into(source, received)
            assert len(received) < size, "the layer's last bytes were never sent"
            assert blob.gets == [None] * attempt, "nothing cached: every reader refetches"
            assert node.cache.get(blob.digest) is None and node.cache.used == 0
            assert cached_files(Path(node.config.cache_path)) == []


async def test_warm_read_makes_no_get_even_after_a_restart(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """A cached layer is served from disk: no GET from this fetcher, nor from a new one built
    over the same directory (a restarted agent)."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        blob = registry.add(layer(3 * CHUNK + 1))
        assert await read_layer(node, registry, blob) == blob.data
        assert await read_layer(node, registry, blob) == blob.data
        restarted = await make_node()
        assert await read_layer(restarted, registry, blob) == blob.data
        start, end = CHUNK - 10, 2 * CHUNK + 10
        ranged = await read_source(await open_layer(restarted, registry, blob), start, end)
        assert ranged == blob.data[start:end]
        assert blob.gets == [None]


async def test_corrupt_chunk_on_disk_resumes_from_a_fresh_download(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """A byte flipped in the cached file's second chunk: the reader gets chunk 0 from the
    cache, then carries on from a fresh download at the byte it reached; the layer is
    cached again, whole and verified."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        blob = registry.add(layer(4 * CHUNK + 9))
        assert await read_layer(node, registry, blob) == blob.data
        entry = node.cache.get(blob.digest)
        assert entry is not None
        with open(entry.data_path, "r+b") as f:
            f.seek(CHUNK + 100)
            byte = f.read(1)
            f.seek(CHUNK + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
        source = await open_layer(node, registry, blob)
        assert isinstance(source, ResumingBlob)
        assert await read_source(source) == blob.data
        assert source.resumes == 1
        assert node.cache.corrupt_chunks == 1
        assert blob.gets == [None, None]
        again = node.cache.get(blob.digest)
        assert again is not None and again is not entry and again.verified
        assert await read_layer(node, registry, blob) == blob.data
        assert len(blob.gets) == 2


async def test_a_layer_cut_short_by_a_crash_resumes_with_its_chunks(
    registry: FakeRegistry, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A node killed mid-layer left chunks on disk: after the restart they are kept (not
    served to clients until the layer verifies), the next download reuses them instead of
    writing them again, and the client gets the right bytes."""
    with trio.fail_after(TIMEOUT):
        blob = registry.add(layer(4 * CHUNK + 9))
        first = await make_node()
        left = first.cache.admit(blob.digest, blob.size)
        assert left is not None
        for index in (0, 1):
            await first.cache.write_chunk(left, index, blob.data[index * CHUNK :][:CHUNK], None)
        # kill -9 here: the entry stays pinned, unverified, its files on disk.
        restarted = await make_node()
        partial = restarted.cache.peek(blob.digest)
        assert partial is not None and restarted.cache.held_chunks(partial) == {0, 1}
        assert restarted.cache.get(blob.digest) is None, "no client reads an unverified layer"
        with caplog.at_level("INFO", logger="agent.cache.store"):
            assert await read_layer(restarted, registry, blob) == blob.data
        assert "resuming" in caplog.text and "2 of 5 chunks kept" in caplog.text
        entry = restarted.cache.get(blob.digest)
        assert entry is not None and entry.verified and blob.gets == [None]


async def test_holds_says_whether_the_origin_sent_a_layer_here_already(
    registry: FakeRegistry, make_node: MakeNode
) -> None:
    """What a root asks before it hands a layer off (`Tracker._hand_off`): a layer on its way
    here or in the cache counts; an unknown one does not."""
    with trio.fail_after(TIMEOUT):
        node = await make_node()
        blob = registry.add(layer(3 * CHUNK + 5), hold=trio.Event())
        assert not node.fetcher.holds(blob.digest)
        async with trio.open_nursery() as readers:
            readers.start_soon(read_layer, node, registry, blob)
            await blob.requested.wait()
            assert node.fetcher.holds(blob.digest), "on its way"
            assert blob.hold is not None
            blob.hold.set()
        assert node.fetcher.in_flight() == []
        assert node.fetcher.holds(blob.digest), "in the cache"
        assert not node.fetcher.holds("sha256:" + "0" * 64)


async def test_a_reader_behind_when_the_download_ends_gets_the_last_chunks_from_memory(
    make_node: MakeNode, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download keeps its last chunks in memory for readers close behind. When it ends with
    a reader still behind, they stay until that reader has them (no read back from the disk),
    and then go back to the buffer pool: a finished download may live on (a root's tracker
    keeps it; the garbage collector, off here, frees its reference cycles late), its chunks
    must not, or the next pull faults in fresh memory."""
    node = await make_node()
    blob = registry.add(os.urandom(12 * CHUNK + 5))  # chunks 0-12
    disk_reads: list[int] = []
    read_chunk = node.cache.read_chunk

    async def counted(entry: CacheEntry, index: int) -> bytes | memoryview:
        disk_reads.append(index)
        return await read_chunk(entry, index)

    monkeypatch.setattr(node.cache, "read_chunk", counted)
    in_use = buffer_pool.in_use_bytes
    parts: list[bytes] = []

    async def read_pausing_after_the_first_piece() -> None:
        source = await open_layer(node, registry, blob)
        try:
            async with aclosing(source.read(0, source.size)) as pieces:
                async for piece in pieces:
                    parts.append(bytes(as_bytes(piece)))
                    while len(parts) == 1 and node.fetcher.in_flight():
                        await trio.sleep(0.01)  # the download ends, this reader at chunk 0
        finally:
            source.close()

    gc.disable()
    try:
        with trio.fail_after(TIMEOUT):
            await read_pausing_after_the_first_piece()
        assert b"".join(parts) == blob.data
        assert disk_reads and not {11, 12} & set(disk_reads)
        assert buffer_pool.in_use_bytes == in_use
    finally:
        gc.enable()
