"""Tests for agent/fetch/window.py: ring sizes, slot holders, reader positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cache.chunks import ChunkLayout
from agent.cache.store import CacheEntry
from agent.fetch.window import (
    RING_MIN,
    ReaderDropped,
    Readers,
    admission,
    ring_slots,
    slot_holder,
)


def test_a_ring_takes_half_the_room_at_least_its_minimum_and_never_too_few() -> None:
    """Half the free room, so the image's other layers still fit beside the ring; but a
    small cache gives a ring all it has rather than none."""
    assert ring_slots(100, 4, room=4 * 80) == 40
    assert ring_slots(30, 4, room=4 * 80) == 30  # never more than the layer's chunks
    assert ring_slots(100, 4, room=4 * (RING_MIN + 4)) == RING_MIN
    assert ring_slots(100, 4, room=4 * (RING_MIN - 1)) is None
    # What is left after the ring fits the rest of a 32 MiB cache's image.
    assert ring_slots(512, 256 << 10, room=32 << 20) == 64


def test_a_layer_admitted_whole_leaves_a_ring_for_each_layer_not_sized_yet() -> None:
    """32 chunks of room: a 32-chunk layer alone is admitted whole; with another layer of the
    pull still to size it takes a ring of 16, leaving that layer 16 (a ring's minimum)."""
    room = 32 * 4
    assert admission(32, 4, 32 * 4, room, True, unsized=0) == (True, 16)
    assert admission(32, 4, 32 * 4, room, True, unsized=1) == (False, 16)
    assert admission(16, 4, 16 * 4, room, True, unsized=1) == (True, 16)  # leaves 16
    assert admission(32, 4, 32 * 4, room, False, unsized=1) == (True, None)  # no ring: whole
    # No ring possible (too little room): whole if it fits, whatever comes next.
    assert admission(8, 4, 8 * 4, 4 * (RING_MIN - 1), True, unsized=1) == (True, None)


def test_the_holder_of_a_slot_is_any_other_chunk_there_written_or_being_written() -> None:
    layout = ChunkLayout(size=40, chunk_size=1)
    entry = CacheEntry(digest="sha256:x", layout=layout, directory=Path("/"), slots=8)
    entry.checksums = {3: 1, 12: 1}
    assert slot_holder(entry, 11, ()) == 3  # 11 and 3 share slot 3
    assert slot_holder(entry, 3, ()) is None  # itself
    assert slot_holder(entry, 20, ()) == 12
    assert slot_holder(entry, 21, [13]) == 13  # being written counts too
    assert entry.file_offset(11) == 3 and entry.reserved == 8


def test_readers_past_is_the_slowest_reader_and_never_beyond_the_hash() -> None:
    moves: list[int] = []
    readers = Readers()
    readers.watch(lambda: moves.append(1))
    assert readers.past(limit=7) == 7  # nobody reads: only the hash holds chunks back
    readers.at(1, 5, now=0.0)
    readers.at(2, 3, now=0.0)
    assert readers.past(limit=10) == 3
    assert readers.past(limit=2) == 2
    readers.gone(2)
    assert readers.past(limit=10) == 5
    readers.gone(2)  # twice: no second call
    assert len(moves) == 3


def test_a_reader_stuck_on_a_chunk_that_is_here_is_dropped_one_waiting_for_bytes_is_not() -> None:
    readers = Readers()
    readers.at(1, 3, now=0.0)  # its client stopped reading at chunk 3
    readers.at(2, 4, now=0.0)  # waits for chunk 4, which has not come
    readers.at(3, 30, now=9.0)  # far ahead, waiting for a slot
    here = {3, 5}.__contains__
    assert readers.drop_stuck(20, since=-1.0, here=here) == 0  # not stuck long enough yet
    assert readers.drop_stuck(20, since=5.0, here=here) == 1
    assert readers.is_dropped(1) and not readers.is_dropped(2)
    assert readers.past(limit=100) == 4
    with pytest.raises(ReaderDropped):
        readers.at(1, 4, now=10.0)  # its next read fails: its response is cut
    readers.at(2, 5, now=10.0)
    assert readers.drop_stuck(20, since=5.0, here=here) == 0  # it moved since
    readers.gone(1)
    assert not readers.is_dropped(1)
