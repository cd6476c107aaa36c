"""The chunk cache on a real directory with the real pread engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.cache import engines, native
from agent.cache.checksums import chunk_checksum, new_chunk_checksum
from agent.cache.store import ChunkCache, ChunkCorrupt
from agent.fetch.window import RING_MIN, ring_slots

CHUNK = 4096


def make_cache(root: Path, capacity: int = 10 * CHUNK) -> ChunkCache:
    cache = ChunkCache(
        root, capacity=capacity, chunk_size=CHUNK, engine=engines.PreadEngine(4), files=native
    )
    cache.load()
    return cache


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def put(cache: ChunkCache, data: bytes) -> str:
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    for i in range(entry.layout.count):
        piece = data[i * CHUNK : (i + 1) * CHUNK]
        await cache.write_chunk(entry, i, piece, hashlib.sha256(piece).hexdigest())
    cache.commit(entry)
    cache.unpin(entry)
    return digest


async def read_all(cache: ChunkCache, digest: str) -> bytes:
    entry = cache.get(digest)
    assert entry is not None
    return b"".join([await cache.read_chunk(entry, i) for i in range(entry.layout.count)])


async def test_round_trip_and_reload(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    data = os.urandom(3 * CHUNK + 17)
    digest = await put(cache, data)
    assert await read_all(cache, digest) == data
    assert cache.used == len(data)
    reloaded = make_cache(tmp_path)
    assert reloaded.used == len(data)
    assert await read_all(reloaded, digest) == data
    entry = reloaded.get(digest)
    assert entry is not None
    assert entry.sha256[3] == sha(data[3 * CHUNK :]), "the chunk table survives a restart"


async def test_a_layer_cut_short_keeps_its_good_chunks_for_peers_not_clients(
    tmp_path: Path,
) -> None:
    """As after kill -9 mid-layer: the chunks on disk whose xxh3 matches stay (peers may fetch
    them, a download resumes with them); a chunk damaged meanwhile goes; clients see nothing."""
    cache = make_cache(tmp_path)
    data = os.urandom(3 * CHUNK)
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    for i in (0, 2):
        await cache.write_chunk(entry, i, data[i * CHUNK : (i + 1) * CHUNK], None)
    assert cache.get(digest) is None  # being written: not a hit
    with open(entry.data_path, "r+b") as f:  # chunk 2 damaged on disk before the restart
        f.seek(2 * CHUNK + 5)
        f.write(b"\xff" if data[2 * CHUNK + 5] != 0xFF else b"\x00")
    reloaded = make_cache(tmp_path)
    assert reloaded.get(digest) is None, "never served to clients before it is verified"
    partial = reloaded.peek(digest)
    assert partial is not None and not partial.verified
    assert reloaded.held_chunks(partial) == {0}
    assert await reloaded.read_chunk(partial, 0) == data[:CHUNK]
    assert reloaded.used == len(data)  # its full size stays reserved
    # The index now says only what is true: a second restart keeps the same chunk.
    again = make_cache(tmp_path)
    kept = again.peek(digest)
    assert kept is not None and again.held_chunks(kept) == {0}


async def test_a_download_resumes_a_partial_layer_and_completes_it(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK + 10)
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    await cache.write_chunk(entry, 1, data[CHUNK : 2 * CHUNK], None)
    reloaded = make_cache(tmp_path)
    resumed = reloaded.admit(digest, len(data))
    assert resumed is not None and resumed.pins == 1 and reloaded.held_chunks(resumed) == {1}
    with pytest.raises(ValueError, match="already in the cache"):
        reloaded.admit(digest, len(data))  # in use now: one writer at a time
    for i in (0, 2):
        await reloaded.write_chunk(resumed, i, data[i * CHUNK : (i + 1) * CHUNK], None)
    reloaded.commit(resumed)
    reloaded.unpin(resumed)
    assert await read_all(reloaded, digest) == data
    assert await read_all(make_cache(tmp_path), digest) == data


async def test_a_partial_layer_whose_size_disagrees_starts_over(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK)
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    await cache.write_chunk(entry, 0, data[:CHUNK], None)
    reloaded = make_cache(tmp_path)
    fresh = reloaded.admit(digest, len(data) + 1)
    assert fresh is not None and reloaded.held_chunks(fresh) == frozenset()
    assert reloaded.used == len(data) + 1


async def test_partial_layers_are_evicted_like_any_other(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, capacity=4 * CHUNK)
    data = os.urandom(3 * CHUNK)
    entry = cache.admit(digest_of(data), len(data))
    assert entry is not None
    await cache.write_chunk(entry, 0, data[:CHUNK], None)
    reloaded = make_cache(tmp_path, capacity=4 * CHUNK)
    assert reloaded.used == 3 * CHUNK
    other = os.urandom(2 * CHUNK)
    await put(reloaded, other)  # needs the room the crash's leftover held
    assert reloaded.peek(digest_of(data)) is None
    assert await read_all(reloaded, digest_of(other)) == other


async def test_torn_index_line_is_ignored(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK)
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    await cache.write_chunk(entry, 0, data[:CHUNK], sha(data[:CHUNK]))
    await cache.write_chunk(entry, 1, data[CHUNK:], sha(data[CHUNK:]))
    with open(entry.index_path, "a") as index:
        index.write("v")  # the verified marker torn before its newline
    assert make_cache(tmp_path).get(digest) is None


async def test_corrupt_chunk_is_detected_and_layer_dropped(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK)
    digest = await put(cache, data)
    entry = cache.get(digest)
    assert entry is not None
    with open(entry.data_path, "r+b") as f:
        f.seek(CHUNK + 5)
        f.write(b"\x00" if data[CHUNK + 5] else b"\x01")
    assert await cache.read_chunk(entry, 0) == data[:CHUNK]
    with pytest.raises(ChunkCorrupt):
        await cache.read_chunk(entry, 1)
    assert cache.get(digest) is None
    assert cache.used == 0
    assert cache.corrupt_chunks == 1


async def test_a_checksum_computed_as_the_bytes_landed_is_the_one_recorded(
    tmp_path: Path,
) -> None:
    """A writer that summed the chunk while it arrived passes the sum in: the cache records
    it as given (no second pass), and reads check against it."""
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK)
    entry = cache.admit(digest_of(data), len(data))
    assert entry is not None
    running = new_chunk_checksum()
    running.update(data[:CHUNK])
    await cache.write_chunk(entry, 0, data[:CHUNK], sha(data[:CHUNK]), running.intdigest())
    wrong = chunk_checksum(data[CHUNK:]) ^ 1
    await cache.write_chunk(entry, 1, data[CHUNK:], sha(data[CHUNK:]), wrong)
    assert await cache.read_chunk(entry, 0) == data[:CHUNK]
    with pytest.raises(ChunkCorrupt):  # the sum given, not one computed again, is the check
        await cache.read_chunk(entry, 1)


async def test_missing_data_file_counts_as_corrupt(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    digest = await put(cache, os.urandom(CHUNK))
    entry = cache.get(digest)
    assert entry is not None
    entry.data_path.unlink()
    with pytest.raises(ChunkCorrupt):
        await cache.read_chunk(entry, 0)
    assert cache.get(digest) is None


async def test_lru_eviction_respects_capacity_and_pins(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, capacity=4 * CHUNK)
    a = await put(cache, os.urandom(2 * CHUNK))
    b = await put(cache, os.urandom(2 * CHUNK))
    assert cache.get(a) is not None  # a is now the most recently used
    c = await put(cache, os.urandom(2 * CHUNK))
    assert cache.get(b) is None, "least recently used layer should have been evicted"
    assert cache.get(a) is not None and cache.get(c) is not None
    assert cache.used <= cache.capacity
    # Pin both: nothing can be evicted, so a new layer is refused rather than overfilling.
    entry_a, entry_c = cache.get(a), cache.get(c)
    assert entry_a is not None and entry_c is not None
    cache.pin(entry_a)
    cache.pin(entry_c)
    assert cache.admit(digest_of(b"new"), 2 * CHUNK) is None
    assert cache.used <= cache.capacity
    cache.unpin(entry_a)
    assert cache.admit(digest_of(b"new"), 2 * CHUNK) is not None
    assert cache.get(a) is None
    assert cache.evictions == 2


async def test_layer_bigger_than_capacity_is_refused(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, capacity=2 * CHUNK)
    assert cache.admit(digest_of(b"x"), 3 * CHUNK) is None
    assert cache.used == 0


async def test_reload_drops_layers_beyond_a_smaller_capacity(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, capacity=10 * CHUNK)
    await put(cache, os.urandom(3 * CHUNK))
    await put(cache, os.urandom(3 * CHUNK))
    smaller = make_cache(tmp_path, capacity=4 * CHUNK)
    assert smaller.used == 3 * CHUNK
    assert smaller.statistics()["layers"] == 1


async def test_reload_over_capacity_keeps_the_newest_layers_in_lru_order(tmp_path: Path) -> None:
    """A cache over its (smaller) capacity at start-up kept the oldest layers and deleted
    the newest; now the newest stay, and the oldest of them is the next to go."""
    cache = make_cache(tmp_path, capacity=10 * CHUNK)
    layers = [await put(cache, os.urandom(2 * CHUNK)) for _ in range(4)]
    for age, digest in enumerate(reversed(layers)):  # layers[0] oldest ... layers[3] newest
        entry = cache.get(digest)
        assert entry is not None
        os.utime(entry.directory, (1_000_000 - age * 100, 1_000_000 - age * 100))
    smaller = make_cache(tmp_path, capacity=5 * CHUNK)
    assert smaller.used == 4 * CHUNK
    assert smaller.admit(digest_of(b"new"), 2 * CHUNK) is not None  # the older of the two goes
    assert [smaller.get(d) is not None for d in layers] == [False, False, False, True]


async def test_changed_chunk_size_invalidates_cache(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    digest = await put(cache, os.urandom(2 * CHUNK))
    other = ChunkCache(
        tmp_path,
        capacity=10 * CHUNK,
        chunk_size=2 * CHUNK,
        engine=engines.PreadEngine(2),
        files=native,
    )
    other.load()
    assert other.get(digest) is None
    assert other.used == 0


class DiskEvents:
    """An observer that keeps the cache's disk events (agent.observe.events.Observer's `disk`)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def disk(self, op: str, pathname: str, offset: int, size: int, seconds: float) -> None:
        assert seconds >= 0
        self.events.append((op, pathname, offset, size))


async def test_chunk_reads_and_writes_are_observed_with_failures_negative(tmp_path: Path) -> None:
    seen = DiskEvents()
    cache = ChunkCache(
        tmp_path,
        capacity=10 * CHUNK,
        chunk_size=CHUNK,
        engine=engines.PreadEngine(4),
        files=native,
        observer=seen,  # type: ignore[arg-type]
    )
    cache.load()
    data = os.urandom(2 * CHUNK + 5)
    digest = await put(cache, data)
    entry = cache.get(digest)
    assert entry is not None
    path = str(entry.data_path)
    assert seen.events == [
        ("filewrite", path, 0, CHUNK),
        ("filewrite", path, CHUNK, CHUNK),
        ("filewrite", path, 2 * CHUNK, 5),
    ]
    seen.events.clear()
    await cache.read_chunk(entry, 2)
    with open(path, "r+b") as f:  # damage chunk 1
        f.seek(CHUNK + 1)
        f.write(b"\x00\xff")
    with pytest.raises(ChunkCorrupt):
        await cache.read_chunk(entry, 1)
    assert seen.events == [("fileread", path, 2 * CHUNK, 5), ("fileread", path, CHUNK, -1)]


async def test_layers_without_a_chunk_table_reload(tmp_path: Path) -> None:
    """An agent (not a root) records no sha256 per chunk; its index still reloads."""
    cache = make_cache(tmp_path)
    data = os.urandom(2 * CHUNK + 5)
    digest = digest_of(data)
    entry = cache.admit(digest, len(data))
    assert entry is not None
    for i in range(entry.layout.count):
        await cache.write_chunk(entry, i, data[i * CHUNK : (i + 1) * CHUNK], None)
    cache.commit(entry)
    cache.unpin(entry)
    assert entry.sha256 == {}
    reloaded = make_cache(tmp_path)
    assert await read_all(reloaded, digest) == data
    again = reloaded.get(digest)
    assert again is not None and again.sha256 == {}


async def test_a_ring_layer_holds_its_slots_not_its_size(tmp_path: Path) -> None:
    """A layer bigger than the cache gets a ring of slots: chunk i in slot i mod slots; a
    slot takes a new chunk only after its chunk was released, never while it is being sent."""
    cache = make_cache(tmp_path, capacity=4 * CHUNK)
    data = os.urandom(10 * CHUNK)
    assert cache.admit(digest_of(data), len(data)) is None  # it does not fit whole
    entry = cache.admit(digest_of(data), len(data), slots=4)
    assert entry is not None and cache.used == 4 * CHUNK
    for i in range(4):
        await cache.write_chunk(entry, i, data[i * CHUNK : (i + 1) * CHUNK], None)
    with pytest.raises(ValueError, match="holds 1"):
        await cache.write_chunk(entry, 5, data[5 * CHUNK : 6 * CHUNK], None)
    entry.sending[1] = 1
    with pytest.raises(ValueError, match="being sent"):
        cache.release_chunk(entry, 1)
    del entry.sending[1]
    cache.release_chunk(entry, 1)
    await cache.write_chunk(entry, 5, data[5 * CHUNK : 6 * CHUNK], None)
    assert await cache.read_chunk(entry, 5) == data[5 * CHUNK : 6 * CHUNK]
    assert await cache.read_chunk(entry, 2) == data[2 * CHUNK : 3 * CHUNK]
    assert cache.held_chunks(entry) == {0, 2, 3, 5}
    assert (entry.data_path.stat().st_size) <= 4 * CHUNK
    cache.unpin(entry)
    assert make_cache(tmp_path, capacity=4 * CHUNK).peek(entry.digest) is None  # not kept


def test_a_small_blob_in_flight_takes_no_slot_from_a_ring(tmp_path: Path) -> None:
    """A cache of exactly two minimal rings, the image's config blob (431 bytes) in flight as
    the second layer is sized: the second ring still gets its RING_MIN slots (it got one
    fewer, under the minimum, and the layer left the swarm for the registry). The cache then
    holds 431 bytes over its bound until the blob is let go."""
    cache = make_cache(tmp_path, capacity=2 * RING_MIN * CHUNK)
    first = cache.admit("sha256:" + "1" * 64, 3 * RING_MIN * CHUNK, slots=RING_MIN)
    blob = cache.admit("sha256:" + "2" * 64, 431)  # pinned: being written
    assert first is not None and blob is not None
    assert ring_slots(96, CHUNK, cache.room()) == RING_MIN
    second = cache.admit("sha256:" + "3" * 64, 96 * CHUNK, slots=RING_MIN)
    assert second is not None
    assert cache.used == 2 * RING_MIN * CHUNK + 431
    assert cache.admit("sha256:" + "4" * 64, CHUNK) is None, "no more than that"

    many = make_cache(tmp_path / "many", capacity=8 * CHUNK)
    for n in range(4):  # small blobs in flight: a new layer overlooks a chunk's worth at most
        assert many.admit(f"sha256:{n}" + "0" * 63, CHUNK - 1) is not None
    assert many.room() == 8 * CHUNK - 4 * (CHUNK - 1) + CHUNK
