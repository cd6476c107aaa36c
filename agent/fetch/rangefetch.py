"""Bytes from the middle of a blob, by `Range` request: a chunk the swarm lost, which the
owning root fetches again (a layer bigger than the root's cache); the chunks a late reader of a
ring missed; and the skipping a resumed download does when the upstream ignores `Range`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from agent.cache.store import CacheEntry
from agent.fetch.model import FetchContext, LayerCorrupt, LayerFailed, LayerRef
from agent.http.client import ClientResponse, HttpClientError
from agent.observe.auditline import url_pathname
from agent.registry.client import passthrough_error

if TYPE_CHECKING:
    from agent.fetch.download import Chunk, LayerDownload

log = logging.getLogger(__name__)


async def refetch_chunk(context: FetchContext, download: LayerDownload, index: int) -> int:
    """Fetch chunk `index` of a ring layer again from the origin (the swarm lost it: every
    holder let it go) and put it back in its slot, checked against the sha256 this node
    recorded when the chunk first passed. Returns the bytes taken from the origin."""
    entry = download.entry
    if entry is None or entry.slots is None or entry.dropped:
        raise LayerFailed(f"layer {download.digest}: no ring to refetch chunk {index} into")
    if download.holds(index):
        return 0  # still on its way to the disk (the tracker saw a later chunk land first)
    ref = download.ref
    started = time.perf_counter()
    async with aclosing(checked_chunks(context, ref, entry, index, index + 1)) as chunks:
        async for _, data, sha256 in chunks:
            seconds = time.perf_counter() - started
            path = url_pathname(f"{ref.upstream.base_url}/v2/{ref.repo}/blobs/{ref.digest}")
            context.observer.refetched(path, entry.layout.offset(index), len(data), seconds)
            await download.put_back(index, data, sha256)
    return entry.layout.length(index)


async def checked_chunks(
    context: FetchContext, ref: LayerRef, entry: CacheEntry, first: int, stop: int
) -> AsyncIterator[tuple[int, Chunk, str]]:
    """Chunks [first, stop) of a layer from its upstream, in one `Range` request, each checked
    against the sha256 this node recorded for it (its chunk table: a ring keeps it for every
    chunk that passed). Yields (index, bytes, sha256)."""
    layout = entry.layout
    offset, end = layout.offset(first), layout.offset(stop - 1) + layout.length(stop - 1)
    path = f"/v2/{ref.repo}/blobs/{ref.digest}"
    wanted = [*ref.headers, (b"range", f"bytes={offset}-{end - 1}".encode())]
    registry = context.registry
    async with registry.open("GET", ref.upstream, path, wanted, follow_redirects=True) as response:
        if response.status not in (200, 206):
            raise await passthrough_error(response, path)
        skip = resumed_skip(response, offset, path, end=end)
        if skip:
            log.warning("%s: the upstream ignored Range; skipping %d bytes", path, skip)
            await discard(response, skip)
        for index in range(first, stop):
            sha256 = context.cache.chunk_sha256(entry, index)
            if sha256 is None:
                raise LayerFailed(f"layer {ref.digest}: chunk {index} has no recorded sha256")
            data = context.cache.new_buffer(layout.length(index))
            view, filled, hasher = memoryview(data), 0, hashlib.sha256()
            while filled < len(data):
                n = await response.receive_into(view[filled:])
                if n == 0:
                    raise HttpClientError(f"{path}: body ended in chunk {index}")
                hasher.update(view[filled : filled + n])  # while in the CPU's cache
                filled += n
            if hasher.hexdigest() != sha256:
                context.observer.rejected("layer")
                raise LayerCorrupt(f"layer {ref.digest}: chunk {index} from the origin differs")
            yield index, data, sha256


def resumed_skip(
    response: ClientResponse, offset: int, what: str, *, end: int | None = None
) -> int:
    """How many leading bytes of a ranged response to skip: none after a 206 from `offset` (to
    `end`, when the range had one), `offset` after a 200 (the upstream ignored `Range`);
    anything else fails."""
    if response.status == 206:
        content_range = response.header("content-range") or ""
        expected = f"bytes {offset}-" if end is None else f"bytes {offset}-{end - 1}/"
        if not content_range.startswith(expected):
            raise LayerFailed(f"resume of {what} got Content-Range {content_range!r}")
        return 0
    if response.status == 200:
        return offset
    raise LayerFailed(f"resume of {what} answered {response.status}")


async def discard(response: ClientResponse, count: int) -> None:
    """Skip `count` body bytes (a resume answered 200 instead of 206)."""
    scratch = memoryview(bytearray(min(count, 1 << 20) or 1))
    while count:
        n = await response.receive_into(scratch[: min(count, len(scratch))])
        if n == 0:
            raise HttpClientError("body ended while skipping")
        count -= n
