"""Chunk geometry: how a layer of a given size splits into chunks.

Shared by the cache, the layer downloads, the swarm's planner and root, and the simulator, so
every part agrees on which bytes chunk *i* holds.

A layer's first chunks are small (its *head*). A pull across a swarm starts with one copy of a
chunk crossing log2 N hops, store and forward, before most nodes have anything to pass on; a
hop takes a chunk's time on the link, so smaller first chunks fill the nodes' links sooner
(`pollen simulate --uniform-chunks` against the default: N=16 at 100/200 Mbit/s, two 64 MiB
layers 1.40 -> 1.33 x T_min; eight 16 MiB layers 1.72 -> 1.44; sixteen 8 MiB 2.11 -> 1.36).
Past the head the chunks are ``chunk_size``, so the per-chunk costs (a request, a plan
exchange, a cache record) stay where the bytes are. The rule, from the layer's size and the
cluster's chunk size alone, so no message has to carry it:

- the first HEAD_CHUNKS chunks are half a chunk, a quarter when the whole layer fits in two
  chunks (a small layer wants as many pieces as a big one's head to spread well);
- a head chunk must stay a multiple of HEAD_ALIGN (the page, and O_DIRECT's alignment) and at
  least HEAD_MIN: where a quarter would not, a half; where neither would (chunks under 2 MiB),
  the layer is cut uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Small chunks at a layer's start. With `--ramp 0.3` (N=8 200/400, N=16 100/200 two 64 MiB
# layers, N=16 eight 16 MiB): 4 of them 1.31 / 1.38 / 1.68, 8: 1.29 / 1.31 / 1.44, 12 or 16
# no better (1.29-1.31 / 1.29 / 1.44), for more chunks to pay for.
HEAD_CHUNKS = 8
HEAD_ALIGN = 4096  # a head chunk's size is a multiple of this (O_DIRECT's alignment)
# And no smaller: with 512 KiB chunks a 2 Mbit/s straggler among six 100 Mbit/s nodes held
# the others to 1.85 x their time without it (1 MiB: 1.18 x, 2 MiB: 1.13 x; the simulator,
# 2 x 32 MiB, uniform chunks): it took fast peers' only upload slots for 8 s of a 6 s pull.
HEAD_MIN = 1024 * 1024


def head_chunk_size(size: int, chunk_size: int) -> int:
    """The size of a layer's head chunks by the rule above (`chunk_size`: no head)."""
    for divisor in (4, 2) if size <= 2 * chunk_size else (2,):
        if chunk_size % (divisor * HEAD_ALIGN) == 0 and chunk_size // divisor >= HEAD_MIN:
            return chunk_size // divisor
    return chunk_size


@dataclass(frozen=True, kw_only=True)
class ChunkLayout:
    """Chunk *i*'s bytes in a layer of `size` bytes, chunks of `chunk_size` past the head.

    `head_chunk`: the head's chunk size, by the rule when 0; `chunk_size` cuts the layer
    uniformly (`pollen simulate --uniform-chunks` compares)."""

    size: int
    chunk_size: int
    head_chunk: int = 0
    head_count: int = field(init=False)  # chunks in the head
    head_end: int = field(init=False)  # bytes in the head

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0 or not 0 <= self.head_chunk <= self.chunk_size:
            raise ValueError(
                f"bad chunk layout size={self.size} chunk_size={self.chunk_size} "
                f"head_chunk={self.head_chunk}"
            )
        head = self.head_chunk or head_chunk_size(self.size, self.chunk_size)
        count = 0 if head == self.chunk_size else min(HEAD_CHUNKS, -(-self.size // head))
        object.__setattr__(self, "head_chunk", head)
        object.__setattr__(self, "head_count", count)
        object.__setattr__(self, "head_end", min(self.size, count * head))

    @property
    def count(self) -> int:
        return self.head_count + -(-(self.size - self.head_end) // self.chunk_size)

    def offset(self, index: int) -> int:
        if index < self.head_count:
            return index * self.head_chunk
        return self.head_end + (index - self.head_count) * self.chunk_size

    def length(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(index)
        step = self.head_chunk if index < self.head_count else self.chunk_size
        return min(step, self.size - self.offset(index))

    def index_of(self, offset: int) -> int:
        """The chunk that holds byte `offset` (0 <= offset < size)."""
        if offset < self.head_end:
            return offset // self.head_chunk
        return self.head_count + (offset - self.head_end) // self.chunk_size

    def covering(self, start: int, end: int) -> range:
        """Indexes of the chunks that hold bytes [start, end)."""
        if end <= start:
            return range(0)
        return range(self.index_of(start), self.index_of(end - 1) + 1)

    def lengths(self) -> list[int]:
        """Every chunk's length, in order."""
        return [self.length(index) for index in range(self.count)]

    def part(self, index: int) -> float:
        """Chunk `index`'s length as a share of a full chunk (a head chunk's, the last's)."""
        return self.length(index) / self.chunk_size

    def scale(self, index: int) -> float:
        """Chunk `index`'s cut as a share of a full chunk: a head chunk's, 1 past the head (a
        short last chunk still costs a round trip and a request: time as a whole one)."""
        return self.head_chunk / self.chunk_size if index < self.head_count else 1.0
