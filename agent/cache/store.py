"""The disk chunk cache: where layers live on a node, bounded by ``cache.capacity``.

Layout: ``<cache.path>/blobs/<algorithm>/<hex>/`` holds ``data`` (the layer, chunk *i* at
``ChunkLayout.offset(i)``: small head chunks, then chunkSize ones) and ``index``, an
append-only text log (`agent.cache.indexfile` spells and reads its lines)::

    pollen-index 2 <digest> <size> <chunk_size>
    c <index> <length> <xxh3-64 hex> <sha256 hex or ->   one line per chunk, after its data
    v                                                     the whole layer matched its digest

A chunk counts only once its line is in the index, and a layer is served only after ``v``; a
process killed mid-write therefore leaves nothing that is served wrong. Every chunk read is
checked against its xxh3 sum, so a chunk damaged on disk is detected, dropped and never served.

Capacity is reserved in full when a layer is admitted, so the cache never exceeds its bound
(but for up to a chunk of small blobs being written or read, which a new layer may overlook);
least recently used layers that nobody reads or writes (pins == 0) are evicted to make room.

After a crash, a layer cut short keeps the chunks whose bytes match their xxh3 (checked once
at start-up): peers may fetch them, and the next download of the layer resumes with them
(`admit` returns the partial entry); clients read it only once it is verified whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from agent.cache.checksums import chunk_checksum, mapped_checksum
from agent.cache.chunks import ChunkLayout
from agent.cache.entry import CacheEntry, blob_directory
from agent.cache.indexfile import VERIFIED_LINE, chunk_line, header_line, parse_index
from agent.observe.auditline import FILEREAD, FILEWRITE, failure_size
from agent.observe.events import NULL_OBSERVER, Observer

log = logging.getLogger(__name__)


class ChunkCorrupt(Exception):
    """A chunk read back from disk does not match its checksum; its layer was dropped."""


class IOEngine(Protocol):
    """The chunk I/O the cache needs from an `agent.cache.engines` engine (tests may fake it)."""

    name: str

    async def read(self, fd: int, offset: int, length: int) -> bytes | memoryview: ...

    async def write(self, fd: int, offset: int, data: bytes | bytearray | memoryview) -> None: ...


class FileOps(Protocol):
    """The file calls the cache needs from `agent.cache.native` (kept injectable for tests)."""

    def open_file(self, path: str, *, write: bool, create: bool, direct: bool = False) -> int: ...

    def close_file(self, fd: int) -> None: ...

    def allocate(self, fd: int, offset: int, length: int) -> None: ...

    def alloc_buffer(self, n: int) -> memoryview: ...

    def round_up(self, n: int) -> int: ...


class ChunkCache:
    """Owns the cache directory; all state changes happen on the trio thread."""

    def __init__(
        self,
        root: Path,
        *,
        capacity: int,
        chunk_size: int,
        engine: IOEngine,
        files: FileOps,
        direct: bool = False,
        write_retry: float = 30.0,
        observer: Observer = NULL_OBSERVER,
        chunk_tables: bool = True,
    ) -> None:
        self.root = root
        self._observer = observer  # every chunk read and write (audit log, metrics)
        self.capacity = capacity
        self.chunk_size = chunk_size
        self._engine = engine
        self._files = files
        self._direct = direct
        # After a failed write (disk full, directory gone) new layers bypass the cache this
        # long, then caching is tried again: it resumes by itself once space returns.
        self._write_retry = write_retry
        # Whether chunks are recorded with their sha256 (the swarm's chunk table). Only a root
        # vouches for chunks, so other nodes skip the extra hash pass on every byte.
        self.chunk_tables = chunk_tables
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # LRU order, oldest first
        self.used = 0
        self.evictions = 0
        self.corrupt_chunks = 0
        self.write_errors = 0
        self._trash_serial = 0
        self._writes_paused_until = 0.0

    # -- start-up ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the index from disk; anything incomplete or unreadable is deleted."""
        blobs = self.root / "blobs"
        shutil.rmtree(self.root / "trash", ignore_errors=True)  # dropped layers of a past run
        try:
            blobs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # The agent still serves (every layer streams past the cache) and tries again.
            self.write_failed(exc)
            return
        kept = partial = removed = 0
        found: list[tuple[float, CacheEntry]] = []
        for algo_dir in sorted(blobs.iterdir()):
            if not algo_dir.is_dir():
                continue
            for blob_dir in sorted(algo_dir.iterdir()):
                entry = self._load_entry(blob_dir)
                if entry is None:
                    shutil.rmtree(blob_dir, ignore_errors=True)
                    removed += 1
                    continue
                found.append((blob_dir.stat().st_mtime, entry))
        # Over capacity (a smaller cache.capacity than last run): the newest layers stay, the
        # oldest go; the ones kept enter the LRU oldest first, as they would have run.
        keep: list[CacheEntry] = []
        for _mtime, entry in sorted(found, key=lambda item: item[0], reverse=True):
            if self.used + entry.size > self.capacity:
                shutil.rmtree(entry.directory, ignore_errors=True)
                removed += 1
                continue
            keep.append(entry)
            self.used += entry.size
        for entry in reversed(keep):
            self._entries[entry.digest] = entry
            if entry.verified:
                kept += 1
            else:
                partial += 1
        log.info(
            "cache %s: %d layers kept (%d bytes of %d), %d partial kept for peers and resumes, "
            "%d incomplete removed",
            self.root,
            kept,
            self.used,
            self.capacity,
            partial,
            removed,
        )

    def _load_entry(self, blob_dir: Path) -> CacheEntry | None:
        """The layer a past run left in `blob_dir`, or None when it must be fetched again
        (a torn, foreign or damaged index: `parse_index` refuses it)."""
        try:
            text = (blob_dir / "index").read_text("ascii")
            data_size = (blob_dir / "data").stat().st_size
            record = parse_index(text)
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        if blob_directory(self.root, record.digest) != blob_dir:
            return None
        if record.layout.chunk_size != self.chunk_size:
            return None  # a different chunk size means different chunk checksums: refetch
        entry = CacheEntry(
            digest=record.digest,
            layout=record.layout,
            directory=blob_dir,
            checksums=record.checksums,
            sha256=record.sha256,
            verified=record.verified,
        )
        complete = len(entry.checksums) == entry.layout.count and data_size >= entry.size
        if entry.verified and complete:
            return entry  # trusted as a whole; every read still checks its chunk
        # A layer cut short (kill -9, power loss): keep the chunks whose bytes are on disk and
        # match their xxh3. Peers may fetch them (they verify against the chunk table) and a
        # download of the layer resumes with them; no client reads it before it is verified.
        entry.verified = False
        self._keep_good_chunks(entry, data_size)
        if not entry.checksums:
            return None
        self._rewrite_index(entry)
        return entry

    def _keep_good_chunks(self, entry: CacheEntry, data_size: int) -> None:
        layout = entry.layout
        try:
            data = os.open(entry.data_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            entry.checksums.clear()
            return
        try:
            for index in sorted(entry.checksums):
                offset, length = layout.offset(index), layout.length(index)
                good = offset + length <= data_size and (
                    chunk_checksum(os.pread(data, length, offset)) == entry.checksums[index]
                )
                if not good:
                    log.warning("cache: chunk %d of %s did not survive", index, entry.digest)
                    del entry.checksums[index]
                    entry.sha256.pop(index, None)
        finally:
            os.close(data)

    def _rewrite_index(self, entry: CacheEntry) -> None:
        """The index of a partial layer as it is now (its good chunks only), replaced at once."""
        lines = [header_line(entry.digest, entry.size, self.chunk_size)]
        for index in sorted(entry.checksums):
            length = entry.layout.length(index)
            lines.append(chunk_line(index, length, entry.checksums[index], entry.sha256.get(index)))
        scratch = entry.index_path.with_suffix(".new")
        scratch.write_text("".join(lines), encoding="ascii")
        os.replace(scratch, entry.index_path)

    # -- lookups and admission ----------------------------------------------------------

    def get(self, digest: str) -> CacheEntry | None:
        """A complete, verified layer, marked as recently used."""
        entry = self._entries.get(digest)
        if entry is None or not entry.verified:
            return None
        self._entries.move_to_end(digest)
        return entry

    def peek(self, digest: str) -> CacheEntry | None:
        """The layer's entry, complete or still being written, without touching LRU order
        (peers asking for chunks must not keep a layer alive that no client uses)."""
        return self._entries.get(digest)

    def admit(self, digest: str, size: int, *, slots: int | None = None) -> CacheEntry | None:
        """Reserve room for a new layer and create its files; None when it cannot fit.

        With `slots`, the layer gets a ring of that many chunk slots instead of its full size
        (a layer bigger than the cache; see `release_chunk`). The returned entry is pinned once
        (by its writer).
        """
        existing = self._entries.get(digest)
        if existing is not None:
            if existing.verified or existing.pins:
                raise ValueError(f"{digest} already in the cache")
            if existing.size == size and existing.slots is None and slots is None:
                log.info(
                    "cache: resuming %s with %d of %d chunks kept",
                    digest,
                    len(existing.checksums),
                    existing.layout.count,
                )
                existing.pins = 1
                self._entries.move_to_end(digest)
                return existing
            self.drop(existing)  # another size, or a ring that passed on: start over
        if time.monotonic() < self._writes_paused_until:
            return None
        layout = ChunkLayout(size=size, chunk_size=self.chunk_size)
        probe = CacheEntry(digest=digest, layout=layout, directory=self.root, slots=slots)
        reserve = probe.reserved
        if reserve > self.capacity or not self._make_room(reserve):
            return None
        directory = blob_directory(self.root, digest)
        try:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            with open(directory / "index", "x", encoding="ascii") as index:
                index.write(header_line(digest, size, self.chunk_size, ring=slots))
            fd = self._files.open_file(str(directory / "data"), write=True, create=True)
            try:
                if self._direct:
                    # Reserve the blocks now: a full disk shows here, not mid-layer, and
                    # O_DIRECT writes inside the file's size need no synchronous extension.
                    self._files.allocate(fd, 0, self._files.round_up(reserve))
            finally:
                self._files.close_file(fd)
        except OSError as exc:
            log.error("cache: cannot create %s for %s: %s", directory, digest, exc)
            shutil.rmtree(directory, ignore_errors=True)
            self.write_failed(exc)
            return None
        entry = CacheEntry(digest=digest, layout=layout, directory=directory, pins=1, slots=slots)
        self._entries[digest] = entry
        self.used += reserve
        return entry

    def room(self) -> int:
        """The most a new layer could get: the capacity less what pinned layers reserve."""
        pinned = sum(e.reserved for e in self._entries.values() if e.pins)
        return self.capacity - pinned + self._small_pinned()

    def _small_pinned(self) -> int:
        """What pinned blobs smaller than a chunk reserve, up to one chunk: a config blob of a
        few hundred bytes in flight as a layer was sized took a whole slot from its ring (15 <
        RING_MIN: the layer left the swarm for the registry). They are gone in a moment, so a
        new layer may overlook them: the cache then exceeds its bound by at most a chunk."""
        chunk = self.chunk_size
        small = sum(e.reserved for e in self._entries.values() if e.pins and e.reserved < chunk)
        return min(small, chunk)

    def _make_room(self, size: int) -> bool:
        used = self.used - self._small_pinned()
        if used + size <= self.capacity:
            return True
        unpinned = [e for e in self._entries.values() if e.pins == 0]  # partial ones too
        freeable = sum(e.reserved for e in unpinned)
        if used - freeable + size > self.capacity:
            return False
        for entry in unpinned:  # oldest first
            if used + size <= self.capacity:
                break
            log.info("cache: evicting %s (%d bytes)", entry.digest, entry.reserved)
            used -= entry.reserved
            self._remove(entry)
            self.evictions += 1
        return True

    def write_failed(self, exc: OSError) -> None:
        """Note a failed write: new layers stream past the cache for a while."""
        self.write_errors += 1
        self._writes_paused_until = time.monotonic() + self._write_retry
        log.error(
            "cache %s: write failed (%s); layers bypass the cache for %.0fs",
            self.root,
            exc,
            self._write_retry,
        )

    def pin(self, entry: CacheEntry) -> None:
        entry.pins += 1

    def unpin(self, entry: CacheEntry) -> None:
        entry.pins -= 1
        if entry.pins == 0 and entry.dropped:
            shutil.rmtree(entry.directory, ignore_errors=True)

    def drop(self, entry: CacheEntry) -> None:
        """Forget a layer now (corrupt, or its download failed); files go when unpinned."""
        if entry.dropped:
            return
        if self._entries.get(entry.digest) is entry:
            del self._entries[entry.digest]
            self.used -= entry.reserved
        entry.dropped = True
        if entry.pins == 0:
            shutil.rmtree(entry.directory, ignore_errors=True)
            return
        # Readers still hold it: move its files aside so a fresh copy of the same layer can be
        # admitted at the layer's own path while they finish.
        self._trash_serial += 1
        trash = self.root / "trash" / f"{entry.directory.name}-{os.getpid()}-{self._trash_serial}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            entry.directory.rename(trash)
            entry.directory = trash
        except OSError as exc:
            log.warning("cache: cannot move dropped %s aside: %s", entry.digest, exc)

    def _remove(self, entry: CacheEntry) -> None:
        del self._entries[entry.digest]
        self.used -= entry.reserved
        entry.dropped = True
        shutil.rmtree(entry.directory, ignore_errors=True)

    # -- chunk I/O ------------------------------------------------------------------------

    async def write_chunk(
        self,
        entry: CacheEntry,
        index: int,
        data: bytes | bytearray | memoryview,
        sha256: str | None,
        checksum: int | None = None,
    ) -> None:
        """Write chunk `index` and record it in the index (data first, then the record).

        `sha256` is the chunk's hex sha256, computed by the caller from the bytes it received
        (the swarm's chunk table); it is stored so this node can vouch for the chunk later.
        `checksum` is its `chunk_checksum` when the caller computed it as the bytes landed
        (these very bytes: buffers are never reused while a chunk is written), else it is
        computed here.
        """
        if len(data) != entry.layout.length(index):
            raise ValueError(
                f"chunk {index} of {entry.digest}: {len(data)} bytes, "
                f"want {entry.layout.length(index)}"
            )
        offset = entry.file_offset(index)
        if entry.slots is not None:
            taken = [c for c in entry.checksums if c % entry.slots == index % entry.slots]
            if taken and taken != [index]:
                raise ValueError(f"{entry.digest}: the slot of chunk {index} holds {taken[0]}")
        started = time.perf_counter()
        try:
            fd = self._files.open_file(
                str(entry.data_path), write=True, create=False, direct=self._direct
            )
            try:
                await self._engine.write(fd, offset, data)
            finally:
                self._files.close_file(fd)
            if checksum is None:
                checksum = chunk_checksum(data)
            self._append_index(entry, chunk_line(index, len(data), checksum, sha256))
        except OSError as exc:
            self._observer.disk(
                FILEWRITE, str(entry.data_path), offset, failure_size(exc), _since(started)
            )
            raise
        self._observer.disk(FILEWRITE, str(entry.data_path), offset, len(data), _since(started))
        entry.checksums[index] = checksum
        if sha256 is not None:
            entry.sha256[index] = sha256

    @property
    def direct(self) -> bool:
        """Whether chunk data bypasses the page cache (O_DIRECT, cache.aioEnable)."""
        return self._direct

    def new_buffer(self, n: int) -> bytearray | memoryview:
        """A buffer for one chunk: page-aligned (an O_DIRECT write needs no copy) and recycled
        from the native pool, in either cache mode. A fresh ``bytearray`` per chunk cost a
        zero-fill and a page fault per page (5% of a swarm agent's samples, more of its system
        time: first-touched memory is dear in a VM)."""
        return self._files.alloc_buffer(n)

    async def read_chunk(self, entry: CacheEntry, index: int) -> bytes | memoryview:
        """Read chunk `index`, checked against its checksum; a bad chunk drops the layer.

        A file that vanished or cannot be read counts as corrupt too: the layer is dropped and
        fetched again, never served from a half-present cache.
        """
        path, offset = str(entry.data_path), entry.file_offset(index)
        data: bytes | memoryview = b""

        async def read() -> tuple[int, int]:
            nonlocal data
            fd = self._files.open_file(path, write=False, create=False, direct=self._direct)
            try:
                data = await self._engine.read(fd, offset, entry.layout.length(index))
            finally:
                self._files.close_file(fd)
            return len(data), chunk_checksum(data)

        await self._checked(entry, index, read)
        return data

    async def check_in_place(self, entry: CacheEntry, index: int, fd: int) -> None:
        """Check chunk `index` where it lies in the page cache (mapped, in a worker thread: a
        page not in memory is read from disk), so that sendfile then sends those very pages
        without a copy through Python; a bad chunk drops the layer, as in `read_chunk`. `fd`
        is the caller's `open_for_reading` descriptor."""
        offset, length = entry.file_offset(index), entry.layout.length(index)
        await self._checked(
            entry, index, partial(trio.to_thread.run_sync, mapped_checksum, fd, offset, length)
        )

    async def _checked(
        self, entry: CacheEntry, index: int, measure: Callable[[], Awaitable[tuple[int, int]]]
    ) -> None:
        """Run `measure` (the bytes it found, their xxh3) and judge chunk `index` by it."""
        expected = entry.checksums.get(index)
        if expected is None:
            raise KeyError(f"chunk {index} of {entry.digest} is not in the cache")
        length, offset = entry.layout.length(index), entry.file_offset(index)
        path, started = str(entry.data_path), time.perf_counter()
        try:
            found, checksum = await measure()
        except OSError as exc:
            self._observer.disk(FILEREAD, path, offset, failure_size(exc), _since(started))
            raise self.unreadable(entry, index, exc) from exc
        if found != length or checksum != expected:
            self._observer.disk(FILEREAD, path, offset, -1, _since(started))
            self._corrupt(entry, index, "failed its checksum")
            raise ChunkCorrupt(f"chunk {index} of {entry.digest} is corrupt on disk")
        self._observer.disk(FILEREAD, path, offset, length, _since(started))

    def release_chunk(self, entry: CacheEntry, index: int) -> None:
        """Let chunk `index` of a ring layer go: its slot takes the next chunk. Never while a
        peer is being sent it (`sending`); the caller also waits for its readers."""
        if entry.sending.get(index):
            raise ValueError(f"{entry.digest}: chunk {index} is being sent")
        entry.checksums.pop(index, None)  # its sha256 stays: the table peers verify against

    def held_chunks(self, entry: CacheEntry) -> frozenset[int]:
        """The chunks of `entry` on disk (a resumed layer starts with some)."""
        return frozenset(entry.checksums)

    def chunk_sha256(self, entry: CacheEntry, index: int) -> str | None:
        """The sha256 recorded for a chunk (the table peers verify against), if any."""
        return entry.sha256.get(index)

    async def fill_chunk_table(self, entry: CacheEntry) -> None:
        """Hash the chunks that have no sha256 yet (a layer cached while this node was an
        agent, which keeps no table): a root vouches only for chunks it hashed itself. The
        hashes live in memory; the layer was verified whole when it was cached."""
        self.pin(entry)
        try:
            for index in range(entry.layout.count):
                if index not in entry.sha256:
                    data = await self.read_chunk(entry, index)
                    entry.sha256[index] = hashlib.sha256(data).hexdigest()
        finally:
            self.unpin(entry)

    def open_for_reading(self, entry: CacheEntry) -> int:
        """A read-only descriptor of the layer's data file, for sending it with sendfile; the
        caller checks each chunk's checksum on what it sends, or trusts the verified layer."""
        return os.open(entry.data_path, os.O_RDONLY | os.O_CLOEXEC)

    def unreadable(self, entry: CacheEntry, index: int, exc: OSError) -> ChunkCorrupt:
        """Chunk `index` could not be read (its file vanished, a disk error): the layer is
        dropped and fetched again, never served from a half-present cache; what to raise."""
        self._corrupt(entry, index, f"unreadable: {exc}")
        return ChunkCorrupt(f"chunk {index} of {entry.digest} is unreadable: {exc}")

    def _corrupt(self, entry: CacheEntry, index: int, why: str) -> None:
        self.corrupt_chunks += 1
        log.error("cache: chunk %d of %s %s; dropping the layer", index, entry.digest, why)
        self.drop(entry)

    def commit(self, entry: CacheEntry) -> None:
        """Mark a fully written layer as verified against its digest: from now on it is served."""
        if len(entry.checksums) != entry.layout.count:
            raise ValueError(
                f"{entry.digest}: commit with {len(entry.checksums)} of {entry.layout.count} chunks"
            )
        self._append_index(entry, VERIFIED_LINE)
        entry.verified = True

    def _append_index(self, entry: CacheEntry, line: str) -> None:
        # One small O_APPEND write per record: a crash leaves at most one torn last line.
        fd = os.open(entry.index_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode("ascii"))
        finally:
            os.close(fd)

    def statistics(self) -> dict[str, int]:
        return {
            "capacity": self.capacity,
            "used": self.used,
            "layers": len(self._entries),
            "pinned": sum(1 for e in self._entries.values() if e.pins),
            "evictions": self.evictions,
            "corrupt_chunks": self.corrupt_chunks,
            "write_errors": self.write_errors,
        }


def _since(started: float) -> float:
    return time.perf_counter() - started
