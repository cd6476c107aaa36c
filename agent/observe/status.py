"""``/_pollen/status``: the agent's state as one JSON document, for `pollen status` and people.

Theory of operation: the daemon hands `AgentStatus` the components it wired and, once its
ports are bound, their numbers. Nothing is copied or counted here: each request asks the
components afresh (their ``statistics()``, the downloads in flight, the roots' state), so the
document is never stale and no counter exists twice. The P2P half (`SwarmStatus`) is there
only on a node that serves its P2P port; ``"swarm": null`` otherwise.

`agent.observe.statusview` renders this document for a terminal and reads every key as
optional; the keys below are what it, `pollen doctor` and operators' scripts look for, so
renaming one is a change of interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from agent import __version__
from agent.core.hostport import join_hostport

if TYPE_CHECKING:
    from agent.cache.engines import Engine
    from agent.cache.store import ChunkCache
    from agent.core.upstream import Upstream
    from agent.fetch.fetcher import LayerFetcher
    from agent.fetch.model import DownloadProgress
    from agent.http.server import HttpServer
    from agent.observe.metrics import Telemetry
    from agent.registry.authcheck import AuthChecker
    from agent.swarm.download import SwarmContext
    from agent.swarm.roots import RootSet
    from agent.swarm.server import P2PService
    from agent.swarm.tracker import Tracker


def layer_in_flight(progress: DownloadProgress, now: float) -> dict[str, object]:
    """One download under way; `now` on the clock of ``progress.started_at`` (trio's)."""
    return {
        "digest": progress.digest,
        "upstream": progress.upstream,
        "size": progress.size,
        "received": progress.received,
        "mode": progress.mode,
        "readers": progress.readers,
        "seconds": round(now - progress.started_at, 3),
        "sources": dict(progress.sources),
    }


@dataclass(kw_only=True)
class SwarmStatus:
    """The P2P side: this node's id, its roots, what it fetched from and served to peers."""

    node: str  # the node's P2P id (agent.swarm.protocol.parse_node)
    p2p: P2PService
    roots: RootSet | None = None  # None on a root with no roots of its own
    swarm: SwarmContext | None = None
    tracker: Tracker | None = None  # on a root
    parent: SwarmContext | None = None  # on a root with parent roots
    server: HttpServer | None = None  # the P2P port's: connections, limits reached

    def document(self) -> dict[str, object]:
        parent = self.parent
        return {
            "node": self.node,
            "roots": self.roots.state() if self.roots else [],
            "origin_fallbacks": sum(self.swarm.fallbacks.values()) if self.swarm else 0,
            "origin_fallback_causes": dict(self.swarm.fallbacks) if self.swarm else {},
            "peer_bytes": self.swarm.peer_bytes if self.swarm else 0,
            "sealed_layers": self.swarm.sealed if self.swarm else 0,  # no whole-layer pass
            "rehashed_bytes": self.swarm.rehashed_bytes if self.swarm else 0,  # no seal came
            "clock_refusals": self.swarm.clock_refusals if self.swarm else 0,
            "chunks_served": self.p2p.chunks_served,
            "bytes_served": self.p2p.bytes_served,
            "waited_for_landing": self.p2p.waited_for_landing,  # cut-through: asked early
            "landing_wait_ms": self.p2p.landing_wait_ms,
            "relayed": self.p2p.relayed,  # of those, sent on as they landed
            "refused": self.p2p.refused,
            "server": self.server.statistics() if self.server else None,
            "tracker": self.tracker.statistics() if self.tracker else None,
            "parent": {
                "roots": parent.roots.state(),
                "peer_bytes": parent.peer_bytes,
                "sealed_layers": parent.sealed,
            }
            if parent is not None
            else None,
        }


@dataclass(kw_only=True)
class AgentStatus:
    """The components the status document is read from; `document()` per request."""

    mode: str
    node_ip: str
    p2p_port: int
    upstreams: Sequence[Upstream]
    ready: Callable[[], bool]  # the proxy port answers /readyz with 200
    engine: Engine
    cache: ChunkCache
    fetcher: LayerFetcher
    auth: AuthChecker
    server: HttpServer  # the proxy port's
    telemetry: Telemetry
    swarm: SwarmStatus | None = None  # None: this node does not serve its P2P port
    exporter_enabled: bool = False
    # The standalone exporter's port (the configured one until it is bound); None when
    # /metrics is served on the proxy port.
    exporter_port: int | None = None
    proxy_port: int = 0  # 0 until bound
    clock: Callable[[], float] = trio.current_time  # the downloads' clock

    def document(self) -> dict[str, object]:
        """The JSON of ``/_pollen/status`` (and `pollen status`)."""
        now = self.clock()
        return {
            "version": __version__,
            "mode": self.mode,
            "node": join_hostport(self.node_ip, self.p2p_port),
            "proxy_port": self.proxy_port,
            "ready": self.ready(),
            "io_engine": self.engine.statistics(),
            "cache": self.cache.statistics(),
            "downloads": self.fetcher.statistics(),
            "layers_in_flight": [layer_in_flight(p, now) for p in self.fetcher.in_flight()],
            "auth_checks": dict(self.auth.results),
            "server": self.server.statistics(),
            "upstreams": [str(u) for u in self.upstreams],
            "swarm": self.swarm.document() if self.swarm is not None else None,
            "telemetry": {"exporter": self._exporter(), **self.telemetry.statistics()},
        }

    def _exporter(self) -> dict[str, object]:
        if not self.exporter_enabled:
            where = "off"
        elif self.exporter_port is not None:
            where = f"port {self.exporter_port}"
        else:
            where = "/metrics on the proxy port"
        return {"enabled": self.exporter_enabled, "where": where}
