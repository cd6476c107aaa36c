"""A layer bigger than the cache: it passes through a ring of chunk slots, behind its readers.

Theory of operation. When a layer cannot have its full size in the cache, a download that
serves peers (a swarm download, or a root's from the origin) admits it with a ring of W slots
(chunk i in slot i mod W, `agent.cache.store`; W is half the free cache, at least RING_MIN),
so the node stays in the swarm instead of leaving it for the registry. Readers read in order;
a chunk may go once every reader is past it, it is in the whole-layer hash, and the swarm
does not need this node's copy (`LayerDownload.keep`: a root keeps a chunk until every node
pulling the layer has it or is past it). The planner is told at once that the readers passed
it (`released` with `past`: its demand is bounded by the window), but the bytes stay in their
slot, and this node stays their source, until the slot is needed; then the planner hears that
the chunk left (`released(evicted=...)`) and the root stops naming this node as its source.
A slot is never reused while a peer is being sent its chunk. A chunk arriving for a slot that
still holds a chunk a reader needs waits: slow readers hold the download back, they never
lose bytes. A lower chunk fetched again (the root's Range request for a chunk the swarm lost)
takes its slot from a higher one, so the lowest chunk anyone waits for always gets a place.

A reader that holds the ring back (its slot is needed, it is not past the chunk in it) for
longer than slowReaderTimeout is dropped: its response is cut (the client may resume with a
Range request) and the others go on; one client that stops reading cannot stall a layer for
every other reader of it. A streamed layer (no ring) drops such a reader the same way.

A reader that comes after the ring let its first chunks go joins where the ring still keeps
chunks for its readers and gets the chunks before from the upstream (`LateRingReader`).

W must exceed the root's window (8 chunks) plus the transfers in flight: chunks arrive out of
order within that window, and the reader waits for the first missing one, so the ring has to
hold them all. Smaller caches leave the swarm for the registry as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain

from agent.cache.store import CacheEntry
from agent.fetch.model import LayerFailed

RING_MIN = 16  # slots: the root's window (ROOT_WINDOW, 8), the transfers in flight, slack
SLOT_RECHECK = 0.05  # s between looks at a slot held only by a chunk being sent to a peer


def ring_slots(count: int, chunk_size: int, room: int) -> int | None:
    """The slots a layer of `count` chunks gets when `room` bytes of the cache are free or
    evictable, or None when the ring would be too small to stream through. A ring takes half
    the room (at least RING_MIN slots): the image's other layers still fit beside it."""
    slots = min(count, max(room // 2, min(room, RING_MIN * chunk_size)) // chunk_size)
    return slots if slots >= RING_MIN else None


def admission(
    count: int, chunk_size: int, size: int, room: int, ring: bool, unsized: int
) -> tuple[bool, int | None]:
    """How to admit a layer of `size` bytes (`count` chunks) with `room` bytes free or
    evictable: (try it whole, else the ring slots to try; None: no ring).

    A layer that may pass through a ring (`ring`) is admitted whole only if that leaves a
    minimal ring's room for each of the `unsized` other layers in flight whose sizes are not
    known yet: else the order in which the sizes arrive decides, and a small layer that fills
    the cache sends a big one of the same pull to the registry (stream mode) instead of
    through a ring beside it."""
    slots = ring_slots(count, chunk_size, room) if ring else None
    if slots is None:
        return True, None
    return room - size >= unsized * RING_MIN * chunk_size, slots


def slot_holder(entry: CacheEntry, index: int, unwritten: Iterable[int]) -> int | None:
    """The chunk (other than `index`) in, or being written to, the slot of chunk `index`."""
    assert entry.slots is not None
    slot = index % entry.slots
    for chunk in chain(entry.checksums, unwritten):
        if chunk != index and chunk % entry.slots == slot:
            return chunk
    return None


class ReaderDropped(LayerFailed):
    """A reader that held the other readers of a layer back longer than slowReaderTimeout."""


class Readers:
    """Where each reader of a layer is (the next chunk it reads), and which chunks left the
    ring since the watcher (the swarm driver) last looked."""

    def __init__(self) -> None:
        self._at: dict[int, int] = {}
        self._moved_at: dict[int, float] = {}  # when each reader last moved on
        self._dropped: set[int] = set()  # readers that held the others back too long
        self._moved: Callable[[], None] | None = None
        self._evicted: set[int] = set()  # chunks left the ring, not yet taken by the watcher

    def watch(self, moved: Callable[[], None]) -> None:
        """Call `moved` whenever a reader advances or leaves (the swarm driver's hook)."""
        self._moved = moved

    def at(self, reader: int, index: int, now: float) -> None:
        self.check(reader)
        if self._at.get(reader) != index:
            self._moved_at[reader] = now
        self._at[reader] = index
        if self._moved is not None:
            self._moved()

    def evicted(self, chunk: int) -> None:
        """`chunk` left the ring (its slot took another): the watcher hears of it too."""
        if self._moved is not None:
            self._evicted.add(chunk)
            self._moved()

    def take_evicted(self) -> set[int]:
        evicted, self._evicted = self._evicted, set()
        return evicted

    def gone(self, reader: int) -> None:
        self._dropped.discard(reader)
        self._moved_at.pop(reader, None)
        if self._at.pop(reader, None) is not None and self._moved is not None:
            self._moved()

    def drop_stuck(self, index: int, since: float, here: Callable[[int], bool]) -> int:
        """Drop the readers not yet past chunk `index` (they hold a slot the layer needs)
        that have not moved on since `since` though the chunk they are at is `here` (their
        client stopped reading; a reader waiting for bytes is never dropped): their next read
        fails (`ReaderDropped`), the others go on. How many went."""
        slow = [
            r
            for r, at in self._at.items()
            if at <= index and self._moved_at.get(r, 0) <= since and here(at)
        ]
        for reader in slow:
            del self._at[reader]
            self._dropped.add(reader)
        if slow and self._moved is not None:
            self._moved()
        return len(slow)

    def is_dropped(self, reader: int | None) -> bool:
        return reader in self._dropped

    def check(self, reader: int | None) -> None:
        """Raise ReaderDropped for a reader that was dropped."""
        if reader in self._dropped:
            raise ReaderDropped("this reader held the others back too long and was dropped")

    def limit_moved(self) -> None:
        """The limit `past` is given moved: the watcher looks again."""
        if self._moved is not None:
            self._moved()

    def past(self, limit: int) -> int:
        """The first chunk some reader still needs, at most `limit` (the first chunk not in
        the whole-layer hash yet: nothing from there may go)."""
        return min([*self._at.values(), limit])
