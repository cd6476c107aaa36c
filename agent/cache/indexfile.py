"""A cached layer's ``index`` file, without I/O: its lines written and read back.

Theory of operation
-------------------
Each layer in the cache has an append-only text log next to its data (`agent.cache.store`
has the layout and why)::

    pollen-index 2 <digest> <size> <chunk_size>
    c <index> <length> <xxh3-64 hex>  <sha256 hex or ->   one line per chunk, after its data
    v                                                      the whole layer matched its digest

The writers here (`header_line`, `chunk_line`) are the only way lines are spelled, and
`parse_index` reads back what a past run left: the text a crash, a full disk or another
program may have torn or damaged. It accepts only what the writers spell -- the digest in the
grammar every other layer trusts (it names the layer's directory and is served to peers),
plain decimals, 16 and 64 lower-case hex digits -- and raises ValueError for anything else;
the store then deletes the layer and fetches it again, so a damaged index costs a download and
never puts a wrong digest or chunk-table entry into service (a root vouches for chunk sha256
values in its plans). The last element after the final newline is ignored (empty, or a line
torn mid-write); a chunk line outside the layer's geometry is skipped, as it always was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.cache.chunks import ChunkLayout
from agent.core.errors import RegistryError
from agent.registry.routes import parse_digest

INDEX_MAGIC = "pollen-index 2"  # 2: layers have small head chunks (agent.cache.chunks)
NO_SHA256 = "-"  # a chunk recorded without its sha256 (only roots keep the chunk table)
_DECIMAL = r"(0|[1-9][0-9]{0,18})"  # as str(int) writes it, below 10**19
_HEADER_RE = re.compile(rf"{INDEX_MAGIC} ([\x21-\x7e]+) {_DECIMAL} {_DECIMAL}")
_CHUNK_RE = re.compile(rf"c {_DECIMAL} {_DECIMAL} ([0-9a-f]{{16}}) ({NO_SHA256}|[0-9a-f]{{64}})")


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
    header = _HEADER_RE.fullmatch(lines[0])
    if header is None:
        raise ValueError(f"not a {INDEX_MAGIC} header: {lines[0][:120]!r}")  # also a ring's
    digest, size, chunk_size = header[1], int(header[2]), int(header[3])
    try:
        if str(parse_digest(digest)) != digest:
            raise ValueError(f"digest {digest!r} is not spelled canonically")
    except RegistryError as e:
        raise ValueError(e.message) from None
    record = IndexRecord(digest=digest, layout=ChunkLayout(size=size, chunk_size=chunk_size))
    for line in lines[1:-1]:
        if line == VERIFIED_LINE[:-1]:
            record.verified = True
            continue
        chunk = _CHUNK_RE.fullmatch(line)
        if chunk is None:
            raise ValueError(f"not an index line: {line[:120]!r}")
        index, length = int(chunk[1]), int(chunk[2])
        if index < record.layout.count and length == record.layout.length(index):
            record.checksums[index] = int(chunk[3], 16)
            if chunk[4] != NO_SHA256:
                record.sha256[index] = chunk[4]
    return record
