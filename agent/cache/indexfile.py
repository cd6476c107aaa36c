"""A cached layer's ``index`` file, without I/O: its lines written and read back.

Theory of operation
-------------------
Each layer in the cache has an append-only text log next to its data (`agent.cache.store`
has the layout and why)::

    pollen-index 1 <digest> <size> <chunk_size>
    c <index> <length> <xxh3-64 hex>  <sha256 hex or ->   one line per chunk, after its data
    v                                                      the whole layer matched its digest

The writers here (`header_line`, `chunk_line`) are the only way lines are spelled, and
`parse_index` reads back what a past run left: the text a crash, a full disk or another
program may have torn or damaged. It raises ValueError for anything it does not accept, and
the store then deletes the layer and fetches it again, so a damaged index costs a download and
nothing else. The last element after the final newline is ignored (empty, or a line torn
mid-write).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.cache.chunks import ChunkLayout

INDEX_MAGIC = "pollen-index 1"
NO_SHA256 = "-"  # a chunk recorded without its sha256 (only roots keep the chunk table)


@dataclass(kw_only=True)
class IndexRecord:
    """What an index says about its layer."""

    digest: str
    layout: ChunkLayout
    checksums: dict[int, int] = field(default_factory=dict)  # chunk -> xxh3-64
    sha256: dict[int, str] = field(default_factory=dict)  # chunk -> hex sha256
    verified: bool = False


def header_line(digest: str, size: int, chunk_size: int, ring: int | None = None) -> str:
    """The first line; a ring layer's (`ring=N`) is never read back (its chunks passed on)."""
    suffix = f" ring={ring}" if ring is not None else ""
    return f"{INDEX_MAGIC} {digest} {size} {chunk_size}{suffix}\n"


def chunk_line(index: int, length: int, checksum: int, sha256: str | None) -> str:
    """A chunk's record, appended once its bytes are written."""
    return f"c {index} {length} {checksum:016x} {sha256 or NO_SHA256}\n"


VERIFIED_LINE = "v\n"


def parse_index(text: str) -> IndexRecord:
    """Read an index back; ValueError when it is not one this version wrote whole."""
    lines = text.split("\n")
    header = lines[0].split(" ")
    if len(header) != 5 or " ".join(header[:2]) != INDEX_MAGIC:
        raise ValueError("not a pollen-index 1 header")  # also a ring layer's ("ring=N")
    digest, size, chunk_size = header[2], int(header[3]), int(header[4])
    record = IndexRecord(digest=digest, layout=ChunkLayout(size=size, chunk_size=chunk_size))
    for line in lines[1:-1]:
        parts = line.split(" ")
        if parts == ["v"]:
            record.verified = True
        elif len(parts) == 5 and parts[0] == "c" and len(parts[4]) in (1, 64):
            index, length = int(parts[1]), int(parts[2])
            if 0 <= index < record.layout.count and length == record.layout.length(index):
                record.checksums[index] = int(parts[3], 16)
                if parts[4] != NO_SHA256:
                    record.sha256[index] = parts[4]
        else:
            raise ValueError(f"not an index line: {line[:80]!r}")
    return record
