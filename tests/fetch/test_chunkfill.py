"""ChunkFill: pieces of a body land in chunk buffers and are hashed as they land."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.cache.checksums import chunk_checksum
from agent.cache.chunks import ChunkLayout
from agent.fetch.chunkfill import ChunkFill

CHUNK = 1000


def fill_all(
    data: bytes, pieces: list[int], *, tabled: bool
) -> list[tuple[int, bytes, str | None]]:
    """Feed `data` in pieces of the given sizes (cycled), cut at chunk ends as a receive into
    `free()` is; the chunks as they complete, with their table sha."""
    layout = ChunkLayout(size=len(data), chunk_size=CHUNK)
    fill = ChunkFill(layout, "sha256", bytearray, tabled=tabled)
    done: list[tuple[int, bytes, str | None]] = []
    offset, step = 0, 0
    while offset < len(data):
        view = fill.free()
        n = min(len(view), pieces[step % len(pieces)], len(data) - offset)
        view[:n] = data[offset : offset + n]
        fill.landed(n)
        offset, step = offset + n, step + 1
        if fill.full:
            assert fill.checksum() == chunk_checksum(fill.chunk)
            done.append((fill.index, bytes(fill.chunk), fill.table_sha()))
            if not fill.last:
                fill.advance()
    assert fill.layer.hexdigest() == hashlib.sha256(data).hexdigest()
    return done


@pytest.mark.parametrize("pieces", [[1], [7, 300, 999], [CHUNK], [5000]])
def test_every_chunk_and_the_layer_hash_as_one_pass_would(pieces: list[int]) -> None:
    data = os.urandom(3 * CHUNK + 123)
    done = fill_all(data, pieces, tabled=True)
    assert [index for index, _, _ in done] == [0, 1, 2, 3]
    for index, chunk, sha in done:
        want = data[index * CHUNK : (index + 1) * CHUNK]
        assert chunk == want
        assert sha == hashlib.sha256(want).hexdigest()


def test_no_table_without_tables() -> None:
    done = fill_all(os.urandom(2 * CHUNK), [333], tabled=False)
    assert [sha for _, _, sha in done] == [None, None]


def test_each_chunk_gets_a_fresh_buffer() -> None:
    """An emitted chunk is shared with readers: the next chunk must not overwrite it."""
    layout = ChunkLayout(size=2 * CHUNK, chunk_size=CHUNK)
    fill = ChunkFill(layout, "sha256", bytearray, tabled=True)
    fill.free()[:] = b"a" * CHUNK
    fill.landed(CHUNK)
    first = fill.chunk
    fill.advance()
    fill.free()[:] = b"b" * CHUNK
    fill.landed(CHUNK)
    assert first == b"a" * CHUNK and fill.chunk is not first
    index, chunk, sha, checksum = fill.done()
    assert (index, chunk, sha) == (1, b"b" * CHUNK, hashlib.sha256(b"b" * CHUNK).hexdigest())
    assert checksum == chunk_checksum(b"b" * CHUNK)


def test_free_after_a_partial_fill_continues_the_same_chunk() -> None:
    """A body that broke mid-chunk is resumed into the rest of the same buffer (the next
    response's first `free()`), and the chunk's hashes go on from where they were."""
    data = os.urandom(CHUNK + 10)
    layout = ChunkLayout(size=len(data), chunk_size=CHUNK)
    fill = ChunkFill(layout, "sha256", bytearray, tabled=True)
    fill.free()[:400] = data[:400]
    fill.landed(400)
    view = fill.free()  # the next response: the same chunk from byte 400
    assert len(view) == CHUNK - 400
    view[:] = data[400:CHUNK]
    fill.landed(CHUNK - 400)
    assert fill.table_sha() == hashlib.sha256(data[:CHUNK]).hexdigest()


def test_a_full_chunk_is_never_refilled_in_place() -> None:
    """`free()` on a full chunk that was not advanced would start a second buffer for the same
    index and lose the first's hashes: it refuses instead."""
    layout = ChunkLayout(size=CHUNK, chunk_size=CHUNK)
    fill = ChunkFill(layout, "sha256", bytearray, tabled=True)
    fill.free()[:] = b"x" * CHUNK
    fill.landed(CHUNK)
    with pytest.raises(AssertionError):
        fill.free()
