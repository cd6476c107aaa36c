"""One layer in the cache: its chunks' sums and where they lie in its data file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.cache.chunks import ChunkLayout


@dataclass(eq=False, kw_only=True)
class CacheEntry:
    """One layer in the cache, complete or being written."""

    digest: str
    layout: ChunkLayout
    directory: Path
    checksums: dict[int, int] = field(default_factory=dict)  # xxh3-64, checked on every read
    sha256: dict[int, str] = field(default_factory=dict)  # the chunk table peers verify against
    verified: bool = False
    pins: int = 0
    dropped: bool = False
    # A layer bigger than the cache passes through a ring of `slots` chunk slots (chunk i in
    # slot i mod slots); None: the whole layer has its place. `sending` counts chunks being
    # sent to peers straight from the file: their slots are not reused meanwhile.
    slots: int | None = None
    sending: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def reserved(self) -> int:
        """The bytes of capacity this layer holds."""
        if self.slots is None:
            return self.layout.size
        return min(self.layout.size, self.slots * self.layout.chunk_size)

    def file_offset(self, index: int) -> int:
        """Where chunk `index` lives in the data file."""
        if self.slots is None:
            return self.layout.offset(index)
        return (index % self.slots) * self.layout.chunk_size

    @property
    def data_path(self) -> Path:
        return self.directory / "data"

    @property
    def index_path(self) -> Path:
        return self.directory / "index"

    def has_chunk(self, index: int) -> bool:
        return index in self.checksums


def blob_directory(root: Path, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return root / "blobs" / algorithm / hexpart
