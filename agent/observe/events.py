"""What the data path reports, and the pure arithmetic of reporting it; no I/O.

Theory of operation. The cache, the layer downloads, the proxy and the P2P server each hold one
`Observer` and tell it what happened, as it happens: a chunk read or written (``disk``), bytes
served to a client or a peer (``served``), a chunk fetched from the origin, a root or a peer
(``fetched``), a chunk or layer refused by an integrity check (``rejected``), an HTTP request
handled (``request``), a layer pull finished (``layer_done``). Every method is synchronous, cheap
and never blocks; this base class ignores everything, so components built without telemetry (in
unit tests) need no stand-in. The daemon passes `agent.observe.metrics.Telemetry`, which turns
the events into Prometheus metrics, audit lines and the per-layer summary.

Two pieces of arithmetic live here because they are easy to get wrong and easy to test:
`SlidingWindow` (the original's 10-second throughput, QPS and maximum latency) and `LayerTimes`
(where the time of one layer pull went, by source and by stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Where a layer's bytes came from.
SOURCES = ("cache", "peer", "root", "origin")
# Where a layer pull's time went: a download slot, the client's auth check, the network, the
# hashing, the cache's disk I/O.
STAGES = ("slot", "auth", "transfer", "verify", "disk")


class Observer:
    """The events of the data path (sizes in bytes, times in seconds); ignores them all."""

    def disk(self, op: str, pathname: str, offset: int, size: int, seconds: float) -> None:
        """A cache chunk ``fileread`` or ``filewrite``; size negative when it failed."""

    def served(self, op: str, pathname: str, offset: int, size: int, seconds: float) -> None:
        """``http:pread`` (a blob response to a client), ``rpc:pread`` / ``rpc:stat`` (a chunk
        or its length to a peer); size negative when it failed."""

    def fetched(
        self, source: str, node: str, pathname: str, offset: int, size: int, seconds: float
    ) -> None:
        """A chunk received from `source` (``origin``, ``root`` or ``peer``; `node` names the
        root or peer); size negative when the transfer failed."""

    def refetched(self, pathname: str, offset: int, size: int, seconds: float) -> None:
        """A chunk the swarm had lost, fetched again from the origin with a `Range` request by
        the root that owns the layer (`size`: the bytes the origin sent)."""

    def rejected(self, where: str) -> None:
        """Bytes refused by an integrity check: ``peer`` (a chunk whose sha256 did not match
        the root's table) or ``layer`` (a whole layer that did not match its digest)."""

    def request(self, port: str, status: int, size: int, seconds: float) -> None:
        """An HTTP request handled on `port` (``proxy``, ``p2p``): its status, the response
        body bytes sent, and the time from request head to the end of the response."""

    def limit_hit(self, port: str, limit: str) -> None:
        """A limit was reached on `port` (``proxy``, ``p2p``, or ``fetch`` for the download
        side): `limit` names it (`pollen_limit_hits`)."""

    def layer_done(self, report: LayerReport) -> None:
        """A layer pull ended (a blob response on the proxy port, or a download no client
        read, such as a root's)."""


NULL_OBSERVER = Observer()


# --------------------------------------------------------------------------------------------
# The original's 10-second windows


@dataclass(frozen=True, kw_only=True)
class WindowRates:
    bytes_per_second: float
    per_second: float
    max_latency_us: int


class SlidingWindow:
    """Events ``(time, bytes, latency)`` over the last `span` seconds, in `resolution` steps.

    Events fall into buckets of `resolution` seconds; the window is the current bucket and the
    ones before it, ``span / resolution`` in all, so an event counts for between
    ``span - resolution`` and ``span`` seconds after it happened. Rates divide by `span`. Memory
    is a fixed ring of buckets, whatever the event rate. Totals since start are kept as well
    (the original's ``DADIP2P_Count``). Times are the caller's monotonic clock.
    """

    def __init__(self, span: float = 10.0, resolution: float = 0.5) -> None:
        if span <= 0 or resolution <= 0 or resolution > span:
            raise ValueError("need 0 < resolution <= span")
        self.span = span
        self.resolution = resolution
        self._n = max(1, round(span / resolution))
        # [bucket number, events, bytes, max latency µs]; a slot holding another bucket number
        # is stale.
        self._ring: list[list[int]] = [[-1, 0, 0, 0] for _ in range(self._n)]
        self.total_bytes = 0
        self.total_events = 0

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.resolution)

    def add(self, now: float, nbytes: int, latency_us: int = 0) -> None:
        self.total_events += 1
        self.total_bytes += max(0, nbytes)
        k = self._bucket(now)
        slot = self._ring[k % self._n]
        if slot[0] != k:
            if slot[0] > k:
                return  # older than the window already holds: outside it
            slot[0], slot[1], slot[2], slot[3] = k, 0, 0, 0
        slot[1] += 1
        slot[2] += max(0, nbytes)
        slot[3] = max(slot[3], latency_us)

    def rates(self, now: float) -> WindowRates:
        newest = self._bucket(now)
        oldest = newest - self._n + 1
        events = nbytes = latency = 0
        for k, count, b, lat in self._ring:
            if oldest <= k <= newest:
                events += count
                nbytes += b
                latency = max(latency, lat)
        return WindowRates(
            bytes_per_second=nbytes / self.span,
            per_second=events / self.span,
            max_latency_us=latency,
        )


# --------------------------------------------------------------------------------------------
# Where one layer pull's time went


@dataclass(kw_only=True)
class LayerTimes:
    """Seconds by stage and bytes by source of a layer pull (or of the download behind it).

    ``transfer`` is the download's wall time from its slot to its last byte, less the hashing
    done on its own task; ``verify`` is time spent hashing (whole-layer digest and chunk sha256);
    ``disk`` is the cache I/O time, summed over chunks: writes run beside the receive, so it may
    overlap ``transfer``.
    """

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    sources: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += max(0.0, seconds)

    def add_bytes(self, source: str, nbytes: int) -> None:
        self.sources[source] += max(0, nbytes)

    def merge(self, other: LayerTimes) -> None:
        for stage, s in other.seconds.items():
            self.seconds[stage] += s
        for source, n in other.sources.items():
            self.sources[source] += n


@dataclass(frozen=True, kw_only=True)
class LayerReport:
    """The summary of one layer pull, logged as one line at its end."""

    digest: str
    upstream: str
    repo: str
    size: int  # bytes delivered (or fetched, for a download no client read)
    seconds: float
    result: str  # ok, failed, cancelled
    times: LayerTimes
    what: str = "pull"  # pull: a client's response; fetch: a download no client read

    def line(self) -> str:
        """One logfmt line: ``layer pull digest=... bytes=... seconds=... result=...
        from_cache=... from_peer=... from_root=... from_origin=... slot_s=... auth_s=...
        transfer_s=... verify_s=... disk_s=...``."""
        parts = [
            f"layer {self.what}",
            f"digest={self.digest}",
            f"upstream={self.upstream}",
            f"repo={self.repo}",
            f"bytes={self.size}",
            f"seconds={self.seconds:.3f}",
            f"result={self.result}",
        ]
        parts += [f"from_{s}={self.times.sources[s]}" for s in SOURCES]
        parts += [f"{s}_s={self.times.seconds[s]:.3f}" for s in STAGES]
        return " ".join(parts)
