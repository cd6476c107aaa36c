"""Target: a cached layer's ``index`` file as a past run (or a crash, a full disk, another
program) left it, read back at start-up (`agent.cache.indexfile.parse_index`, called by
`ChunkCache.load` on the file's text).

The input is the file's bytes; the store reads it as ASCII and refetches a layer whose index
is not.

Contract: the only error is ValueError (the layer is deleted and fetched again); what is
accepted is what the writers (`header_line`, `chunk_line`) could have written: a digest in
the grammar the rest of the agent trusts (it names the layer's directory and is served to
peers), chunks inside the layer with their exact length, 64-bit xxh3 sums, and sha256 values
of 64 lower-case hex digits (a root vouches for them in its plans); and writing the record
out again reads back the same.
"""

from __future__ import annotations

from agent.cache.indexfile import (
    VERIFIED_LINE,
    IndexRecord,
    chunk_line,
    header_line,
    parse_index,
)
from agent.core.errors import RegistryError
from agent.registry.routes import parse_digest
from agent.swarm.protocol import HEX64_RE


def fuzz_one(data: bytes) -> None:
    """One index file through the start-up parser."""
    try:
        text = data.decode("ascii")
        record = parse_index(text)
    except ValueError:  # UnicodeDecodeError included
        return
    try:
        assert str(parse_digest(record.digest)) == record.digest
    except RegistryError as err:
        raise AssertionError(f"digest {record.digest!r} accepted: {err.message}") from None
    layout = record.layout
    for index, checksum in record.checksums.items():
        assert 0 <= index < layout.count, index
        assert 0 <= checksum < 1 << 64, checksum
    for index, sha256 in record.sha256.items():
        assert index in record.checksums, index
        assert HEX64_RE.fullmatch(sha256), sha256
    again = parse_index(render(record))
    assert again == record, (again, record)


def render(record: IndexRecord) -> str:
    """The index the store would write for this record (`ChunkCache._rewrite_index`)."""
    layout = record.layout
    lines = [header_line(record.digest, layout.size, layout.chunk_size)]
    for index in sorted(record.checksums):
        checksum, sha256 = record.checksums[index], record.sha256.get(index)
        lines.append(chunk_line(index, layout.length(index), checksum, sha256))
    if record.verified:
        lines.append(VERIFIED_LINE)
    return "".join(lines)
