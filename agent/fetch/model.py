"""What a layer download is about: which layer (`LayerRef`), what every download of a node
shares (`FetchContext`), how far it got (`DownloadProgress`), and how it can fail.

The failures are `LayerFailed` and its kinds: readers get one of their own when the download
fails after their responses started, and cut those responses short; `ResumingBlob` carries on
past the kinds that are ours (a cache that cannot store), not the upstream's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.cache.store import ChunkCache
from agent.core.upstream import Upstream
from agent.http.responses import Headers
from agent.observe.events import NULL_OBSERVER, Observer
from agent.registry.client import RegistryClient
from agent.registry.routes import Digest


class LayerFailed(Exception):
    """The download failed after responses started; readers must cut their responses short."""


class LayerCorrupt(LayerFailed):
    """The upstream's bytes did not match the layer's digest."""


class CacheWriteFailed(LayerFailed):
    """The cache could not store a chunk (disk full, directory gone): readers carry on from a
    download that does not cache."""


@dataclass(frozen=True, kw_only=True)
class LayerRef:
    """Which layer, from where, asked with which credentials (the client's headers)."""

    digest: Digest
    upstream: Upstream
    repo: str
    headers: Headers
    size: int | None = None  # as the registry told this node (its HEAD), when it did


@dataclass(frozen=True, kw_only=True)
class FetchContext:
    """What every layer download of a node shares."""

    cache: ChunkCache
    registry: RegistryClient
    retries: int  # upstreamRetries: tries after the first, per request and per broken body
    observer: Observer = NULL_OBSERVER
    slow_reader: float = 10.0  # slowReaderTimeout: a reader holding the others back goes


@dataclass(kw_only=True)
class DownloadProgress:
    """What `pollen status` and the per-layer summary show about a download."""

    digest: str
    upstream: str
    size: int | None = None
    received: int = 0
    mode: str = "starting"
    started_at: float = 0.0
    readers: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # bytes by origin, root, peer
