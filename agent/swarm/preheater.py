"""A root's answer to preheat requests: fetch a layer into the cache ahead of the pulls.

`pollen preheat` asks the owning root of each blob of an image to hold it
(`agent.swarm.preheat`). The root fetches it the way its tracker would when the first agent
asks for a plan -- the layer fetcher's `ensure`, from the origin or through the parent tier,
single flight with any download of the same layer, the digest checked before the layer is
committed to the cache -- and answers how far it got. The download belongs to the fetcher, not
to the request: a client that stops asking leaves it running to the end, and asking again
only joins it. A layer already in the cache is answered at once (`cached`), without a word to
the registry.

The root's own checks apply as for a plan: only registries in its ``upstreams``; the
client's credential (over P2P TLS only, checked by the P2P service) goes to the origin with
the fetch; and a layer bigger than the cache is refused before anything is fetched, since it
would only pass through a ring of chunk slots and be gone when the pulls come.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from agent.cache.store import CacheEntry, ChunkCache
from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.registry.routes import Digest, parse_digest
from agent.registry.upstreams import match_upstream
from agent.swarm.preheat import PreheatReply, PreheatTarget

log = logging.getLogger(__name__)

ANSWER_WITHIN = 1.0  # s a preheat request waits for its layer to complete before answering


class Progress(Protocol):
    received: int  # bytes of the layer this node received so far


class PreheatDownload(Protocol):
    """The root's download of a layer, as a preheat follows it
    (`agent.fetch.download.LayerDownload`)."""

    entry: CacheEntry | None
    error: BaseException | None
    verified: bool
    finished: trio.Event
    progress: Progress


class LayerSource(Protocol):
    """Where the root gets its layers (`agent.fetch.fetcher.LayerFetcher`), passed in by the
    daemon so the swarm package does not depend on the fetch package."""

    async def ensure(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: list[tuple[bytes, bytes]]
    ) -> PreheatDownload | CacheEntry:
        """The layer in the cache, or its download once its size is known."""


class Preheater:
    """Preheat requests on a root: each one a look at (and, if need be, a start of) the
    root's own download of the layer."""

    def __init__(
        self,
        *,
        upstreams: tuple[Upstream, ...],
        fetcher: LayerSource,
        cache: ChunkCache,
        answer_within: float = ANSWER_WITHIN,
    ) -> None:
        self._upstreams = upstreams
        self._fetcher = fetcher
        self._cache = cache
        self._answer_within = answer_within
        self.requests = 0

    async def preheat(
        self, asker: str, target: PreheatTarget, authorization: bytes | None
    ) -> PreheatReply:
        """Where the layer stands on this root, after starting its download if need be;
        answered once it is complete, it failed, or `answer_within` passed."""
        self.requests += 1
        upstream = match_upstream(target.upstream, self._upstreams)
        if upstream is None:
            return PreheatReply.failed(
                403, f"registry {target.upstream} is not in this root's upstreams"
            )
        entry = self._cache.get(target.digest)
        if entry is not None:
            return PreheatReply(size=entry.size, stored=entry.size, complete=True, cached=True)
        if target.size is not None and target.size > self._cache.capacity:
            return PreheatReply.failed(
                507,
                f"layer {target.digest} ({target.size} bytes) is bigger than this root's cache "
                f"({self._cache.capacity} bytes): it would pass through and be gone before "
                "the pulls; raise cache.capacity on the roots",
            )
        headers = [(b"authorization", authorization)] if authorization else []
        found: PreheatDownload | CacheEntry | None = None
        with trio.move_on_after(self._answer_within):
            try:
                found = await self._fetcher.ensure(
                    upstream=upstream,
                    repo=target.repo,
                    digest=parse_digest(target.digest),
                    headers=headers,
                )
            except RegistryError as err:
                log.info("preheat %s for %s: %s", target.digest, asker, err.message)
                return PreheatReply.failed(_error_status(err), err.message)
            if isinstance(found, CacheEntry):
                return PreheatReply(size=found.size, stored=found.size, complete=True)
            if found.entry is not None and found.entry.slots is None:  # else: _where says why
                await found.finished.wait()
        if found is None:  # the origin has not told the size yet; the download goes on
            return PreheatReply(size=None)
        assert not isinstance(found, CacheEntry)
        return _where(found, target.digest)


def _where(download: PreheatDownload, digest: str) -> PreheatReply:
    """How far a download is, as a reply."""
    entry = download.entry
    if download.error is not None:
        err = download.error
        status = _error_status(err) if isinstance(err, RegistryError) else 502
        return PreheatReply.failed(status, f"layer {digest}: {err}")
    if entry is None or entry.slots is not None:
        return PreheatReply.failed(
            507,
            f"layer {digest} does not fit this root's cache now (the layers being read hold "
            "it): it passes through without being kept",
        )
    if download.verified:
        return PreheatReply(size=entry.size, stored=entry.size, complete=True)
    return PreheatReply(size=entry.size, stored=min(download.progress.received, entry.size))


def _error_status(err: RegistryError) -> int:
    """The registry's error status for the reply (502 for anything that is not one)."""
    return err.status if 400 <= err.status <= 599 else 502
