"""A cached layer's index lines (agent/cache/indexfile.py): what the writers spell is read back
the same, and nothing else is accepted (the store then refetches the layer). Pure: text in,
a record or ValueError out. fuzz/cache_index.py fuzzes the same contract."""

from __future__ import annotations

import pytest

from agent.cache.chunks import ChunkLayout
from agent.cache.indexfile import (
    VERIFIED_LINE,
    IndexRecord,
    chunk_line,
    header_line,
    parse_index,
)

DIGEST = "sha256:" + "ab" * 32
SHA = "cd" * 32
HEADER = header_line(DIGEST, 10, 4)


def test_what_the_writers_spell_reads_back() -> None:
    text = (
        HEADER
        + chunk_line(0, 4, 0x0123456789ABCDEF, SHA)
        + chunk_line(2, 2, 7, None)
        + VERIFIED_LINE
    )
    assert parse_index(text) == IndexRecord(
        digest=DIGEST,
        layout=ChunkLayout(size=10, chunk_size=4),
        checksums={0: 0x0123456789ABCDEF, 2: 7},
        sha256={0: SHA},
        verified=True,
    )


def test_a_torn_last_line_is_ignored_and_a_chunk_outside_the_layer_skipped() -> None:
    text = HEADER + chunk_line(1, 4, 1, None) + chunk_line(3, 4, 1, None) + "c 2 2 00"
    record = parse_index(text)
    assert record.checksums == {1: 1} and not record.verified


@pytest.mark.parametrize(
    "text",
    [
        "",
        header_line(DIGEST, 10, 4, ring=2),  # a ring layer's chunks passed on
        HEADER.replace(" 10 ", " 010 "),
        HEADER.replace(" 10 ", " +10 "),
        HEADER.replace(" 4\n", " 0\n"),
        HEADER + "v \n",
        HEADER + chunk_line(0, 4, 1, None).replace("-", "x"),
        HEADER + chunk_line(0, 4, 1, SHA.upper()),
        HEADER + "c 0 4 -000000000000001 -\n",
        HEADER + "c 0 4 0x00000000000001 -\n",
        HEADER + "c 00 4 0000000000000001 -\n",
        HEADER + "c 0 4 0000000000000001 -\n".replace(" ", "  ", 1),
        # Version 1 cut layers uniformly (no small head chunks): its chunk numbers are others.
        HEADER.replace("pollen-index 2", "pollen-index 1"),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_index(text)


@pytest.mark.parametrize(
    "digest",
    [
        # Found by fuzz/cache_index.py: any word was taken for the layer's digest.
        "sha256:" + "ab" * 16 + ":" + "ab" * 15,
        "sha256:" + "AB" * 32,
        "md5:" + "ab" * 16,
        DIGEST + "/",  # names the same directory, but is not the layer's digest
    ],
)
def test_a_digest_outside_the_grammar_is_refused(digest: str) -> None:
    with pytest.raises(ValueError):
        parse_index(header_line(digest, 10, 4))


@pytest.mark.parametrize("sha256", ["x", "Z" * 64, "ab" * 31 + "a"])
def test_a_chunk_sha256_that_is_no_hex_sha256_is_refused(sha256: str) -> None:
    # A root vouches for these in its plans: one that is not a sha256 must never get there.
    with pytest.raises(ValueError):
        parse_index(HEADER + f"c 0 4 0000000000000001 {sha256}\n")
