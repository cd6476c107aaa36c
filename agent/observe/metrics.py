"""Every metric Pollen exports, defined here with prometheus-client, and the one `Observer`
the daemon hands to the data path.

Theory of operation. `Telemetry` receives the data path's events
(`agent.observe.events.Observer`) and turns each into three things at most: a sample in one of the
original's 10-second windows (`agent.observe.events.SlidingWindow`, one per ``type``), an update of
an idiomatic ``pollen_*`` counter or histogram, and an audit record
(`agent.observe.audit.AuditLog`, queued, never waited for).
The original's gauges (docs/REFERENCE.md, "Metrics"; names and labels exact, for dashboards)
and the counters that components already keep (cache evictions, auth results, fallbacks) are
computed when Prometheus scrapes, by a collector reading the windows and the components, so
nothing is counted twice. The exposition is served on the exporter port by an `HttpServer`
running `Telemetry.handle`, or as ``/metrics`` on the proxy port.

``DADIP2P_*``, labels ``node="<nodeIP>:<p2pPort>"``, ``mode`` (agent, root) and ``type``:
``pread`` data served downstream (blob responses to clients, chunks to peers), ``download``
chunks fetched back to source, ``peer`` chunks fetched from peers and roots, ``disk`` cache chunk
reads and writes, ``http`` every request on the proxy port. Throughput (bytes/s) and QPS are
over the last 10 s, MaxLatency is the longest operation of the last 10 s in µs, Count the bytes
since start.

Every ``pollen_*`` series carries the same ``node`` label as the ``DADIP2P_*`` gauges: the
``pollen_*`` metrics live in the registry of an `agent.observe.exposition.NodeLabelled`, which
adds it at scrape time, so none can be defined without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent import __version__
from agent.http.responses import Response
from agent.http.server import Request
from agent.observe.audit import AuditLog
from agent.observe.auditline import DOWNLOAD, FILEREAD, HTTP_PREAD, RPC_PREAD, microseconds
from agent.observe.events import SOURCES, LayerReport, Observer, SlidingWindow
from agent.observe.exposition import (
    CONTENT_TYPE,
    NodeLabelled,
    exporter_answer,
    exposition,
    metrics_response,
)
from agent.swarm.planner import FALLBACK_KINDS

if TYPE_CHECKING:
    from agent.cache.store import ChunkCache
    from agent.fetch.fetcher import LayerFetcher
    from agent.registry.authcheck import AuthChecker
    from agent.swarm.download import SwarmContext
    from agent.swarm.server import P2PService

log = logging.getLogger(__name__)

M = TypeVar("M", Counter, Histogram)

__all__ = ["CONTENT_TYPE", "PeerState", "Telemetry"]

WINDOW_TYPES = ("pread", "download", "peer", "disk", "http")
CHUNK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAYER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REJECTED = ("cache_chunk", "peer_chunk", "layer")
PEER_HISTORY = 256  # peers remembered for `pollen status`


@dataclass(kw_only=True)
class PeerState:
    """What this node saw of one peer or root it fetched chunks from."""

    node: str
    role: str  # peer or root
    chunks: int = 0
    bytes: int = 0
    failures: int = 0
    last_ok: bool = True
    last_seen: float = 0.0


class Telemetry(Observer):
    """The node's metrics registry, windows and audit log, fed by the data path."""

    def __init__(
        self,
        *,
        node: str,
        mode: str,
        labels: tuple[tuple[str, str], ...] = (),
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.mode = mode
        self.labels = tuple(labels)
        self.audit = audit if audit is not None else AuditLog(enabled=False)
        self._clock = clock
        self.windows = {t: SlidingWindow() for t in WINDOW_TYPES}
        self.rejected_counts = dict.fromkeys(("peer_chunk", "layer"), 0)
        self.fetch_failures = dict.fromkeys(("origin", "root", "peer"), 0)
        self.limit_hits: dict[str, dict[str, int]] = {}  # port -> limit -> times reached
        self.peers: dict[str, PeerState] = {}
        self._alive: Callable[[], bool] = lambda: True
        self._cache: ChunkCache | None = None
        self._auth: AuthChecker | None = None
        self._fetcher: LayerFetcher | None = None
        self._swarm: SwarmContext | None = None
        self._p2p: P2PService | None = None
        self._engine = ""

        # The exposition: the original's gauges, then every pollen_* series with `node`.
        self.registry = CollectorRegistry()
        self.registry.register(_Original(self))
        labelled = NodeLabelled(node)
        self.registry.register(labelled)
        self._define(labelled.registry)

    def _define(self, r: CollectorRegistry) -> None:
        """The pollen_* counters and histograms the events update, and the collector of the
        components' own counters, in `r` (a `NodeLabelled`'s registry)."""
        self._layer_bytes = _children(
            Counter(
                "pollen_layer_bytes",
                "Layer bytes this node obtained, by source: cache (pulls served from layers "
                "already cached), peer, root, origin",
                ["source"],
                registry=r,
            ),
            SOURCES,
        )
        self._chunk_seconds = _children(
            Histogram(
                "pollen_chunk_seconds",
                "Time to obtain one chunk, by source (cache: a chunk read from the disk cache)",
                ["source"],
                buckets=CHUNK_BUCKETS,
                registry=r,
            ),
            SOURCES,
        )
        served = Counter(
            "pollen_served_bytes",
            "Layer bytes served, to clients on the proxy port or to peers on the P2P port",
            ["to"],
            registry=r,
        )
        self._served = _children(served, ("client", "peer"))
        self._refetches, self._refetch_bytes = _refetch_counters(r)
        disk_bytes = Counter(
            "pollen_disk_bytes", "Cache chunk bytes read and written", ["op"], registry=r
        )
        self._disk_bytes = _children(disk_bytes, ("read", "write"))
        self._disk_seconds = _children(
            Histogram(
                "pollen_disk_seconds",
                "Time of one cache chunk read or write",
                ["op"],
                buckets=CHUNK_BUCKETS,
                registry=r,
            ),
            ("read", "write"),
        )
        self._request_seconds = _children(
            Histogram(
                "pollen_http_request_seconds",
                "Time from request head to the end of the response, by port",
                ["port"],
                buckets=LAYER_BUCKETS,
                registry=r,
            ),
            ("proxy", "p2p"),
        )
        self._limit_hits = Counter(
            "pollen_limit_hits",
            "Times a limit was reached, by port and limit (connections, client_connections, "
            "responses, idle_reclaimed, stalled_reclaimed, send_timeout, head_timeout, "
            "slow_reader, manifest_fetches: docs/SECURITY.md)",
            ["port", "limit"],
            registry=r,
        )
        self._pull_seconds = _children(
            Histogram(
                "pollen_layer_pull_seconds",
                "Time of a whole layer pull through this node, by result",
                ["result"],
                buckets=LAYER_BUCKETS,
                registry=r,
            ),
            ("ok", "failed"),
        )
        r.register(_ComponentCounters(self))

    def bind(
        self,
        *,
        alive: Callable[[], bool],
        cache: ChunkCache | None = None,
        auth: AuthChecker | None = None,
        fetcher: LayerFetcher | None = None,
        swarm: SwarmContext | None = None,
        p2p: P2PService | None = None,
        engine: str = "",
    ) -> None:
        """The components whose own counters are exported at scrape time."""
        self._alive = alive
        self._cache, self._auth, self._fetcher = cache, auth, fetcher
        self._swarm, self._p2p, self._engine = swarm, p2p, engine

    # -- events (agent.observe.events.Observer) ------------------------------------------------

    def disk(self, op: str, pathname: str, offset: int, size: int, seconds: float) -> None:
        us = microseconds(seconds)
        self.windows["disk"].add(self._clock(), size, us)
        kind = "read" if op == FILEREAD else "write"
        if size > 0:
            self._disk_bytes[kind].inc(size)
            self._disk_seconds[kind].observe(seconds)
            if kind == "read":
                self._chunk_seconds["cache"].observe(seconds)
        self.audit.record(op, pathname, offset, size, us)

    def served(self, op: str, pathname: str, offset: int, size: int, seconds: float) -> None:
        us = microseconds(seconds)
        if op in (HTTP_PREAD, RPC_PREAD):
            self.windows["pread"].add(self._clock(), size, us)
            if size > 0:
                self._served["client" if op == HTTP_PREAD else "peer"].inc(size)
        self.audit.record(op, pathname, offset, size, us)

    def fetched(
        self, source: str, node: str, pathname: str, offset: int, size: int, seconds: float
    ) -> None:
        us = microseconds(seconds)
        now = self._clock()
        if size >= 0:
            self.windows["download" if source == "origin" else "peer"].add(now, size, us)
            self._layer_bytes[source].inc(size)
            self._chunk_seconds[source].observe(seconds)
        else:
            self.fetch_failures[source] += 1
        if source == "origin":
            self.audit.record(DOWNLOAD, pathname, offset, size, us)
        elif node:
            self._note_peer(node, source, size, now)

    def _note_peer(self, node: str, role: str, size: int, now: float) -> None:
        peer = self.peers.get(node)
        if peer is None:
            if len(self.peers) >= PEER_HISTORY:
                oldest = min(self.peers.values(), key=lambda p: p.last_seen)
                del self.peers[oldest.node]
            peer = self.peers[node] = PeerState(node=node, role=role)
        peer.role = role
        peer.last_seen = now
        peer.last_ok = size >= 0
        if size >= 0:
            peer.chunks += 1
            peer.bytes += size
        else:
            peer.failures += 1

    def refetched(self, pathname: str, offset: int, size: int, seconds: float) -> None:
        self._refetches.inc()
        self._refetch_bytes.inc(size)
        self.fetched("origin", "", pathname, offset, size, seconds)

    def rejected(self, where: str) -> None:
        key = "peer_chunk" if where == "peer" else where
        self.rejected_counts[key] = self.rejected_counts.get(key, 0) + 1

    def request(self, port: str, status: int, size: int, seconds: float) -> None:
        if port == "proxy":
            self.windows["http"].add(self._clock(), size, microseconds(seconds))
        histogram = self._request_seconds.get(port)
        if histogram is not None:
            histogram.observe(seconds)

    def limit_hit(self, port: str, limit: str) -> None:
        self._limit_hits.labels(port=port, limit=limit).inc()
        hits = self.limit_hits.setdefault(port, {})
        hits[limit] = hits.get(limit, 0) + 1

    def layer_done(self, report: LayerReport) -> None:
        log.info("%s", report.line())
        self._pull_seconds["ok" if report.result == "ok" else "failed"].observe(report.seconds)
        cached = report.times.sources["cache"]
        if cached:
            self._layer_bytes["cache"].inc(cached)

    # -- views ------------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, bytes]:
        """(content type, body) of the Prometheus text exposition."""
        return exposition(self.registry)

    def metrics_response(self) -> Response:
        """``/metrics``, on the exporter port or on the proxy port."""
        return metrics_response(self.registry)

    async def handle(self, request: Request) -> Response:
        """The exporter port's application: ``/metrics`` (and ``/``), nothing else."""
        return exporter_answer(request, self.registry)

    def statistics(self) -> dict[str, object]:
        """For ``/_pollen/status``: peers seen, integrity rejections, the audit log."""
        now = self._clock()
        return {
            "peers": [
                {
                    "node": p.node,
                    "role": p.role,
                    "state": "ok" if p.last_ok else "failing",
                    "chunks": p.chunks,
                    "bytes": p.bytes,
                    "failures": p.failures,
                    "seen_seconds_ago": round(now - p.last_seen, 1),
                }
                for p in sorted(self.peers.values(), key=lambda p: p.node)
            ],
            "rejected": dict(self.rejected_counts),
            "fetch_failures": dict(self.fetch_failures),
            "limit_hits": {port: dict(hits) for port, hits in self.limit_hits.items()},
            "audit": self.audit.statistics(),
        }


def _cache_statistics(t: Telemetry) -> dict[str, int]:
    return t._cache.statistics() if t._cache is not None else {"capacity": 0, "used": 0}


class _Original:
    """Computed at scrape time: the original's gauges, with their own labels."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def describe(self) -> list[Metric]:
        return []  # unchecked: names are fixed above and never clash with the Counters

    def collect(self) -> Iterator[Metric]:
        t = self._t
        now = t._clock()
        base = [t.node, t.mode]
        yield _gauge("DADIP2P_Alive", "1 while the node serves", base, 1 if t._alive() else 0)
        rates = {name: w.rates(now) for name, w in t.windows.items()}
        for name, doc, value in (
            (
                "DADIP2P_Read_Throughtput",
                "bytes per second over the last 10 s",
                lambda k: rates[k].bytes_per_second,
            ),
            (
                "DADIP2P_QPS",
                "operations per second over the last 10 s",
                lambda k: rates[k].per_second,
            ),
            (
                "DADIP2P_MaxLatency",
                "longest operation of the last 10 s, microseconds",
                lambda k: rates[k].max_latency_us,
            ),
            ("DADIP2P_Count", "bytes since start", lambda k: t.windows[k].total_bytes),
        ):
            family = GaugeMetricFamily(name, doc, labels=["node", "mode", "type"])
            for kind in WINDOW_TYPES:
                family.add_metric([*base, kind], float(value(kind)))
            yield family
        cache = _cache_statistics(t)
        family = GaugeMetricFamily(
            "DADIP2P_Cache",
            "cache bytes: allocated (capacity) and used",
            labels=["node", "mode", "type"],
        )
        family.add_metric([*base, "allocated"], float(cache["capacity"]))
        family.add_metric([*base, "used"], float(cache["used"]))
        yield family
        names = [k for k, _ in t.labels]
        family = GaugeMetricFamily(
            "DADIP2P_Label", "the operator's labels of this node", labels=["node", "mode", *names]
        )
        family.add_metric([*base, *(v for _, v in t.labels)], 1.0)
        yield family


class _ComponentCounters:
    """Computed at scrape time: the pollen_* view of the components' own counters."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def describe(self) -> list[Metric]:
        return []  # unchecked: names are fixed here and never clash with the Counters

    def collect(self) -> Iterator[Metric]:
        t = self._t
        cache = _cache_statistics(t)
        info = GaugeMetricFamily(
            "pollen_info",
            "version, role and I/O engine",
            labels=["version", "mode", "node", "io_engine"],
        )
        info.add_metric([__version__, t.mode, t.node, t._engine], 1.0)
        yield info
        yield _gauge("pollen_cache_capacity_bytes", "cache capacity", [], cache["capacity"])
        yield _gauge("pollen_cache_used_bytes", "cache bytes in use", [], cache["used"])
        yield _gauge("pollen_cache_layers", "layers in the cache", [], cache.get("layers", 0))
        yield _counter("pollen_cache_evictions", "layers evicted", cache.get("evictions", 0))
        yield _counter(
            "pollen_cache_write_errors", "failed cache writes", cache.get("write_errors", 0)
        )
        rejected = CounterMetricFamily(
            "pollen_integrity_rejected",
            "bytes refused by an integrity check: cache_chunk (xxh3 on read), peer_chunk "
            "(sha256 against the root's table), layer (whole-layer digest)",
            labels=["what"],
        )
        counts = {**t.rejected_counts, "cache_chunk": cache.get("corrupt_chunks", 0)}
        for what in REJECTED:
            rejected.add_metric([what], float(counts.get(what, 0)))
        yield rejected
        failures = CounterMetricFamily(
            "pollen_fetch_failures", "chunk transfers that failed, by source", labels=["source"]
        )
        for source, n in t.fetch_failures.items():
            failures.add_metric([source], float(n))
        yield failures
        fallbacks = CounterMetricFamily(
            "pollen_origin_fallbacks",
            "layers fetched from the origin because the swarm could not deliver them, by cause",
            labels=["reason"],
        )
        causes = t._swarm.fallbacks if t._swarm is not None else {}
        for reason in sorted(set(FALLBACK_KINDS) | set(causes)):
            fallbacks.add_metric([reason], float(causes.get(reason, 0)))
        yield fallbacks
        yield _counter(
            "pollen_p2p_clock_refusals",
            "requests a root refused because this node's clock is too far from its own",
            float(t._swarm.clock_refusals if t._swarm is not None else 0),
        )
        auth = CounterMetricFamily(
            "pollen_auth_checks",
            "upstream checks that a client may read a layer, by result",
            labels=["result"],
        )
        results = t._auth.results if t._auth is not None else {}
        for result in ("allowed", "allowed_cached", "denied"):
            auth.add_metric([result], float(results.get(result, 0)))
        yield auth
        stats = t._fetcher.statistics() if t._fetcher is not None else {}
        yield _gauge(
            "pollen_layers_in_flight",
            "layer downloads under way",
            [],
            stats.get("downloads_in_flight", 0),
        )
        yield _gauge(
            "pollen_download_slots_waiting",
            "layer downloads waiting for a slot (proxyConcurrencyLimit)",
            [],
            stats.get("downloads_waiting", 0),
        )
        yield _counter(
            "pollen_p2p_refused",
            "P2P requests refused for a bad signature",
            t._p2p.refused if t._p2p is not None else 0,
        )
        audit = t.audit
        lines = CounterMetricFamily(
            "pollen_audit_lines", "audit lines, by outcome", labels=["outcome"]
        )
        for outcome, n in (
            ("written", audit.written),
            ("dropped", audit.dropped),
            ("error", audit.errors),
        ):
            lines.add_metric([outcome], float(n))
        yield lines


def _children(metric: M, values: Iterable[str]) -> dict[str, M]:
    """A metric's child for each value of its one label, made up front: every series is
    exported from the start (at 0), and the data path updates a child without a lookup."""
    return {value: metric.labels(value) for value in values}


def _gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    if labels:
        family = GaugeMetricFamily(name, doc, labels=["node", "mode"])
        family.add_metric(labels, float(value))
        return family
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _refetch_counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """Chunks a root fetched again with a Range request, and the bytes that cost."""
    chunks = Counter(
        "pollen_origin_refetches",
        "Chunks the swarm had lost (every holder let them go), fetched again from the origin "
        "with a Range request by the root that owns the layer",
        registry=registry,
    )
    sent = Counter(
        "pollen_origin_refetch_bytes",
        "Bytes the origin sent for those Range requests",
        registry=registry,
    )
    return chunks, sent
