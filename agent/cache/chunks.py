"""Chunk geometry: how a layer of a given size splits into fixed-size chunks.

Shared by the cache, the layer download and (later) the swarm scheduler, so every part agrees
on which bytes chunk *i* holds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ChunkLayout:
    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0:
            raise ValueError(f"bad chunk layout size={self.size} chunk_size={self.chunk_size}")

    @property
    def count(self) -> int:
        return (self.size + self.chunk_size - 1) // self.chunk_size

    def offset(self, index: int) -> int:
        return index * self.chunk_size

    def length(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def covering(self, start: int, end: int) -> range:
        """Indexes of the chunks that hold bytes [start, end)."""
        if end <= start:
            return range(0)
        return range(start // self.chunk_size, (end - 1) // self.chunk_size + 1)
