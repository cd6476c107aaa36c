"""Bytes from the middle of a blob: the `Range` request a root makes when the swarm lost a
chunk its cache no longer holds (a layer bigger than the root's cache), and the skipping a
resumed download does when the upstream ignores `Range`.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from agent.core.upstream import Upstream
from agent.fetch.model import FetchContext, LayerCorrupt, LayerFailed
from agent.http.client import ClientResponse, HttpClientError
from agent.http.responses import Headers
from agent.observe.auditline import url_pathname
from agent.registry.client import RegistryClient, passthrough_error

if TYPE_CHECKING:
    from agent.fetch.download import LayerDownload


async def refetch_chunk(context: FetchContext, download: LayerDownload, index: int) -> int:
    """Fetch chunk `index` of a ring layer again from the origin (the swarm lost it: every
    holder let it go) and put it back in its slot, checked against the sha256 this node
    recorded when the chunk first passed. Returns the bytes taken from the origin."""
    entry = download.entry
    if entry is None or entry.slots is None or entry.dropped:
        raise LayerFailed(f"layer {download.digest}: no ring to refetch chunk {index} into")
    if download.holds(index):
        return 0  # still on its way to the disk (the tracker saw a later chunk land first)
    sha256 = context.cache.chunk_sha256(entry, index)
    if sha256 is None:
        raise LayerFailed(f"layer {download.digest}: chunk {index} has no recorded sha256")
    ref = download.ref
    path = f"/v2/{ref.repo}/blobs/{ref.digest}"
    offset = entry.layout.offset(index)
    data = context.cache.new_buffer(entry.layout.length(index))
    started = time.perf_counter()
    received = await fetch_range(context.registry, ref.upstream, path, ref.headers, offset, data)
    seconds = time.perf_counter() - started
    if hashlib.sha256(data).hexdigest() != sha256:
        context.observer.rejected("layer")
        raise LayerCorrupt(f"layer {ref.digest}: chunk {index} from the origin changed")
    url = url_pathname(ref.upstream.base_url + path)
    context.observer.refetched(url, offset, received, seconds)
    await download.put_back(index, data, sha256)
    return received


async def fetch_range(
    registry: RegistryClient,
    upstream: Upstream,
    path: str,
    headers: Headers,
    offset: int,
    into: bytearray | memoryview,
) -> int:
    """Fill `into` with the blob's bytes from `offset`; returns the bytes received from the
    upstream (more than `len(into)` when it answered 200 to the whole blob and the leading
    bytes were skipped)."""
    length = len(into)
    wanted = [*headers, (b"range", f"bytes={offset}-{offset + length - 1}".encode())]
    async with registry.open("GET", upstream, path, wanted, follow_redirects=True) as response:
        received = 0
        if response.status == 206:
            content_range = response.header("content-range") or ""
            if not content_range.startswith(f"bytes {offset}-{offset + length - 1}/"):
                raise LayerFailed(f"{path}: Range answered with Content-Range {content_range!r}")
        elif response.status == 200:
            await discard(response, offset)
            received = offset
        else:
            raise await passthrough_error(response, path)
        view = memoryview(into)
        filled = 0
        while filled < length:
            n = await response.receive_into(view[filled:])
            if n == 0:
                raise HttpClientError(f"{path}: body ended at {offset + filled}")
            filled += n
        return received + filled


def resumed_skip(response: ClientResponse, offset: int, what: str) -> int:
    """How many leading bytes of a resumed download's response to skip: none after a 206 from
    `offset`, `offset` after a 200 (the upstream ignored `Range`); anything else fails."""
    if response.status == 206:
        content_range = response.header("content-range") or ""
        if not content_range.startswith(f"bytes {offset}-"):
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
