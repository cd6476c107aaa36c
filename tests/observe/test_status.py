"""The ``/_pollen/status`` document (agent/observe/status.py), built from small components.

Real objects where they are cheap (the HTTP server's counters, the telemetry, the roots, the
P2P service, a download's progress), fakes with a `statistics()` where a real one needs a
disk or an event loop of its own. The document is also rendered by `pollen status` and
served as JSON, so both are checked on it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent import __version__
from agent.core.upstream import parse_upstream
from agent.fetch.model import DownloadProgress
from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings
from agent.observe.metrics import Telemetry
from agent.observe.status import AgentStatus, SwarmStatus, layer_in_flight
from agent.observe.statusview import render_status
from agent.swarm.roots import RootSet
from agent.swarm.server import P2PService

NODE = "10.0.0.5:65002"
DIGEST = "sha256:" + "ab" * 32


class FakeEngine:
    def statistics(self) -> dict[str, Any]:
        return {"name": "pread", "queue_depth": 32, "direct": False, "errors": 0}


class FakeCache:
    def statistics(self) -> dict[str, int]:
        return {"capacity": 4096, "used": 1024, "layers": 1, "evictions": 0}


class FakeFetcher:
    def __init__(self) -> None:
        self.downloads: list[DownloadProgress] = []

    def statistics(self) -> dict[str, object]:
        return {"downloads_in_flight": len(self.downloads), "download_slots_total": -1}

    def in_flight(self) -> list[DownloadProgress]:
        return self.downloads


class FakeAuth:
    results = {"allowed_cached": 1, "allowed": 2, "denied": 3}


class FakeSwarm:
    fallbacks = {"size": 1, "no_root": 3}
    peer_bytes = 5 << 20
    sealed = 2
    rehashed_bytes = 3
    clock_refusals = 4


class FakeTracker:
    def statistics(self) -> dict[str, object]:
        return {"layers": {}, "plans_answered": 6}


async def unused(request: Request) -> Response:
    raise AssertionError("no request is served here")


class Ready:
    def __init__(self) -> None:
        self.ready = False

    def __call__(self) -> bool:
        return self.ready


def make_status(**overrides: Any) -> AgentStatus:
    parts: dict[str, Any] = {
        "mode": "agent",
        "node_ip": "10.0.0.5",
        "p2p_port": 65002,
        "upstreams": (parse_upstream("registry.example.com"), parse_upstream("http://r:5000")),
        "ready": Ready(),
        "engine": FakeEngine(),
        "cache": FakeCache(),
        "fetcher": FakeFetcher(),
        "auth": FakeAuth(),
        "server": HttpServer(unused, ServerSettings(), name="proxy"),
        "telemetry": Telemetry(node=NODE, mode="agent", clock=lambda: 50.0),
        "clock": lambda: 100.0,
    }
    return AgentStatus(**{**parts, **overrides})


def progress() -> DownloadProgress:
    return DownloadProgress(
        digest=DIGEST,
        upstream="registry.example.com",
        size=8 << 20,
        received=3 << 20,
        mode="swarm",
        started_at=97.5,
        readers=2,
        sources={"root": 2 << 20, "peer": 1 << 20},
    )


def test_a_download_in_flight() -> None:
    p = progress()
    shown = layer_in_flight(p, now=100.0001234)
    assert shown == {
        "digest": DIGEST,
        "upstream": "registry.example.com",
        "size": 8 << 20,
        "received": 3 << 20,
        "mode": "swarm",
        "readers": 2,
        "seconds": 2.5,
        "sources": {"root": 2 << 20, "peer": 1 << 20},
    }
    assert shown["sources"] is not p.sources  # a copy: the download goes on changing its own


def test_the_document_reads_every_component() -> None:
    status = make_status()
    status.fetcher.downloads.append(progress())
    doc = status.document()
    assert doc["version"] == __version__
    assert (doc["mode"], doc["node"], doc["proxy_port"], doc["ready"]) == (
        "agent",
        NODE,
        0,
        False,
    )
    assert doc["io_engine"] == FakeEngine().statistics()
    assert doc["cache"] == FakeCache().statistics()
    assert doc["downloads"] == {"downloads_in_flight": 1, "download_slots_total": -1}
    assert doc["layers_in_flight"] == [layer_in_flight(progress(), 100.0)]
    assert doc["auth_checks"] == FakeAuth.results
    assert doc["server"] == status.server.statistics()
    assert doc["upstreams"] == ["https://registry.example.com", "http://r:5000"]
    assert doc["swarm"] is None  # no P2P port on this node
    telemetry = doc["telemetry"]
    assert isinstance(telemetry, dict)
    assert telemetry["exporter"] == {"enabled": False, "where": "off"}
    assert {"peers", "rejected", "fetch_failures", "audit"} <= telemetry.keys()
    json.dumps(doc)  # served as JSON as it is


def test_each_request_sees_the_state_of_the_moment() -> None:
    status = make_status()
    first = status.document()
    status.ready.ready = True
    status.proxy_port = 65001
    status.fetcher.downloads.append(progress())
    second = status.document()
    assert (first["ready"], first["proxy_port"], first["layers_in_flight"]) == (False, 0, [])
    assert (second["ready"], second["proxy_port"], len(second["layers_in_flight"])) == (
        True,
        65001,
        1,
    )


@pytest.mark.parametrize(
    ("enabled", "port", "where"),
    [
        (False, None, "off"),
        (False, 65003, "off"),
        (True, 65003, "port 65003"),
        (True, None, "/metrics on the proxy port"),
    ],
)
def test_where_the_metrics_are(enabled: bool, port: int | None, where: str) -> None:
    doc = make_status(exporter_enabled=enabled, exporter_port=port).document()
    assert doc["telemetry"]["exporter"] == {"enabled": enabled, "where": where}  # type: ignore[index]


async def test_the_swarm_part_on_a_node_with_roots() -> None:
    p2p = P2PService(token=b"t", cache=FakeCache(), plan_handler=None)  # type: ignore[arg-type]
    p2p.chunks_served, p2p.refused, p2p.waited_for_landing, p2p.landing_wait_ms = 7, 1, 5, 60
    p2p.bytes_served = 7 << 22
    roots = RootSet(("10.0.0.2:65002", "10.0.0.3:65002"), p2p_port=65002)
    roots.bench("10.0.0.3:65002", "test")
    swarm = SwarmStatus(node=NODE, p2p=p2p, roots=roots, swarm=FakeSwarm())  # type: ignore[arg-type]
    assert make_status(swarm=swarm).document()["swarm"] == {
        "node": NODE,
        "roots": [
            {"root": "10.0.0.2:65002", "state": "up"},
            {"root": "10.0.0.3:65002", "state": "benched"},
        ],
        "origin_fallbacks": 4,
        "origin_fallback_causes": {"size": 1, "no_root": 3},
        "peer_bytes": 5 << 20,
        "sealed_layers": 2,
        "rehashed_bytes": 3,
        "clock_refusals": 4,
        "chunks_served": 7,
        "bytes_served": 7 << 22,
        "waited_for_landing": 5,
        "landing_wait_ms": 60,
        "relayed": 0,
        "refused": 1,
        "server": None,
        "tracker": None,
        "parent": None,
    }


def test_the_swarm_part_on_a_root_without_roots() -> None:
    p2p = P2PService(token=b"t", cache=FakeCache(), plan_handler=None)  # type: ignore[arg-type]
    swarm = SwarmStatus(node=NODE, p2p=p2p, tracker=FakeTracker())  # type: ignore[arg-type]
    doc = swarm.document()
    assert (doc["roots"], doc["origin_fallbacks"], doc["peer_bytes"]) == ([], 0, 0)
    assert doc["tracker"] == {"layers": {}, "plans_answered": 6}
    assert doc["parent"] is None


async def test_a_root_with_parent_roots_shows_them_and_what_came_through_them() -> None:
    p2p = P2PService(token=b"t", cache=FakeCache(), plan_handler=None)  # type: ignore[arg-type]
    parent = FakeSwarm()
    parent.roots = RootSet(("10.0.1.2:65002",), p2p_port=65002)  # type: ignore[attr-defined]
    swarm = SwarmStatus(node=NODE, p2p=p2p, tracker=FakeTracker(), parent=parent)  # type: ignore[arg-type]
    doc = swarm.document()
    assert doc["parent"] == {
        "roots": [{"root": "10.0.1.2:65002", "state": "up"}],
        "peer_bytes": 5 << 20,
        "sealed_layers": 2,
    }
    text = render_status({"mode": "root", "swarm": doc})
    assert "parent roots (1), 5.0 MiB fetched through them:" in text
    assert "10.0.1.2:65002" in text


async def test_pollen_status_renders_the_document() -> None:
    p2p = P2PService(token=b"t", cache=FakeCache(), plan_handler=None)  # type: ignore[arg-type]
    roots = RootSet(("10.0.0.2:65002",), p2p_port=65002)
    status = make_status(
        swarm=SwarmStatus(node=NODE, p2p=p2p, roots=roots),
        exporter_enabled=True,
        exporter_port=65003,
        proxy_port=65001,
    )
    status.ready.ready = True
    status.fetcher.downloads.append(progress())
    text = render_status(json.loads(json.dumps(status.document())))
    assert text.startswith(f"pollen {__version__} agent {NODE}  ready  (proxy port 65001)\n")
    assert "layers in flight: 1\n" in text
    assert "(2 readers, registry.example.com)" in text
    assert "roots (1):\n  10.0.0.2:65002" in text
    assert "metrics: port 65003; audit log: off" in text
