"""The xxh3 sums a cache file's chunks are checked against on every read."""

from __future__ import annotations

import mmap
import os

import xxhash


def chunk_checksum(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def new_chunk_checksum() -> xxhash.xxh3_64:
    """A running `chunk_checksum` (`intdigest()`), for bytes hashed piece by piece as they
    land rather than in a pass over the whole chunk afterwards."""
    return xxhash.xxh3_64()


def mapped_checksum(fd: int, offset: int, length: int) -> tuple[int, int]:
    """(bytes found, xxh3) of a file's region, read where it lies in the page cache: mapped,
    not copied (blocks on the disk for pages not in memory). A file shorter than the region
    gives fewer bytes found."""
    size = os.fstat(fd).st_size
    found = max(0, min(length, size - offset))
    if found == 0:
        return 0, chunk_checksum(b"")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # one fault-in, not 1,024
    with mmap.mmap(fd, offset - start + found, flags, mmap.PROT_READ, offset=start) as mapped:
        with memoryview(mapped) as view:
            return found, chunk_checksum(view[offset - start :])
