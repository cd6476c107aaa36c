"""Telemetry: the data path's events in, Prometheus exposition and audit records out.

A fake clock drives the 10-second windows; the exposition is parsed back with
prometheus-client's own parser, so what is checked is what Prometheus would read.
"""

from __future__ import annotations

import io

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.http.server import Request
from agent.observe.audit import AuditLog
from agent.observe.events import LayerReport, LayerTimes
from agent.observe.metrics import Telemetry

NODE = {"node": "10.0.0.5:65002", "mode": "agent"}
ON_NODE = {"node": NODE["node"]}  # every pollen_* series carries it
TYPES = ("pread", "download", "peer", "disk", "http")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCache:
    def statistics(self) -> dict[str, int]:
        return {
            "capacity": 4096,
            "used": 1024,
            "layers": 1,
            "evictions": 2,
            "corrupt_chunks": 3,
            "write_errors": 4,
        }


class FakeAuth:
    results = {"allowed_cached": 5, "allowed": 6, "denied": 7}


class FakeSwarm:
    fallbacks = {"root_error": 5, "no_root": 3}
    clock_refusals = 4


def parse(telemetry: Telemetry) -> Samples:
    content_type, body = telemetry.exposition()
    assert content_type.startswith(b"text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def telemetry(clock: Clock) -> Telemetry:
    t = Telemetry(
        node=NODE["node"],
        mode="agent",
        labels=(("zone", "cn-hangzhou-h"),),
        audit=AuditLog(enabled=True, stream=io.StringIO()),
        clock=clock,
    )
    t.bind(alive=lambda: True, cache=FakeCache(), auth=FakeAuth(), swarm=FakeSwarm())  # type: ignore[arg-type]
    return t


def test_every_original_series_with_exact_labels(telemetry: Telemetry) -> None:
    s = parse(telemetry)
    dadi = [(name, dict(labels)) for name, labels in s if name.startswith("DADIP2P_")]
    expected = [("DADIP2P_Alive", NODE)]
    expected += [("DADIP2P_Cache", {**NODE, "type": t}) for t in ("allocated", "used")]
    for name in ("DADIP2P_Count", "DADIP2P_MaxLatency", "DADIP2P_QPS", "DADIP2P_Read_Throughtput"):
        expected += [(name, {**NODE, "type": t}) for t in TYPES]
    expected.append(("DADIP2P_Label", {**NODE, "zone": "cn-hangzhou-h"}))
    key = lambda item: (item[0], sorted(item[1].items()))  # noqa: E731
    assert sorted(dadi, key=key) == sorted(expected, key=key)
    assert get(s, "DADIP2P_Alive", **NODE) == 1
    assert get(s, "DADIP2P_Cache", **NODE, type="allocated") == 4096
    assert get(s, "DADIP2P_Cache", **NODE, type="used") == 1024
    assert get(s, "DADIP2P_Label", **NODE, zone="cn-hangzhou-h") == 1


def test_every_pollen_series_carries_the_node_of_the_original_gauges(
    telemetry: Telemetry,
) -> None:
    """Issue 14, item 3: the pollen_* series had no node label, so they could not be joined
    with DADIP2P_* (`* on (node) group_left (mode) DADIP2P_Alive`)."""
    telemetry.fetched("peer", "10.0.0.3:65002", "", 0, 800, 0.02)
    telemetry.limit_hit("proxy", "connections")  # a series made on the fly, not up front
    s = parse(telemetry)
    original = {dict(labels)["node"] for name, labels in s if name.startswith("DADIP2P_")}
    assert original == {NODE["node"]}
    ours = [(name, dict(labels)) for name, labels in s if name.startswith("pollen_")]
    assert len({name for name, _ in ours}) > 30  # counters, histograms, scrape-time families
    missing = [name for name, labels in ours if labels.get("node") != NODE["node"]]
    assert not missing, missing
    assert get(s, "pollen_limit_hits_total", **ON_NODE, port="proxy", limit="connections") == 1


def test_windows_by_type(telemetry: Telemetry, clock: Clock) -> None:
    telemetry.served("http:pread", "/https://r/v2/a/blobs/sha256:00", 0, 1000, 0.002)
    telemetry.served("rpc:pread", "/p2p/v1/chunk/sha256:00/0", 0, 3000, 0.004)
    telemetry.served("rpc:stat", "/p2p/v1/chunk/sha256:00/0", 0, 3000, 0.0)  # not data
    telemetry.fetched("origin", "", "/https://r/v2/a/blobs/sha256:00", 0, 500, 0.25)
    telemetry.fetched("root", "10.0.0.2:65002", "", 0, 700, 0.01)
    telemetry.fetched("peer", "10.0.0.3:65002", "", 0, 800, 0.02)
    telemetry.disk("filewrite", "/c/data", 0, 4000, 0.001)
    telemetry.disk("fileread", "/c/data", 0, -1, 0.0005)
    telemetry.request("proxy", 200, 1234, 0.5)
    telemetry.request("p2p", 200, 3000, 0.004)  # not the proxy port: no http window
    clock.now += 1
    s = parse(telemetry)

    def g(name: str, kind: str) -> float:
        return get(s, name, **NODE, type=kind)

    assert g("DADIP2P_Read_Throughtput", "pread") == pytest.approx(400.0)
    assert g("DADIP2P_QPS", "pread") == pytest.approx(0.2)
    assert g("DADIP2P_MaxLatency", "pread") == 4000
    assert g("DADIP2P_Count", "pread") == 4000
    assert g("DADIP2P_Count", "download") == 500
    assert g("DADIP2P_MaxLatency", "download") == 250000
    assert g("DADIP2P_Count", "peer") == 1500
    assert g("DADIP2P_QPS", "peer") == pytest.approx(0.2)
    assert g("DADIP2P_Count", "disk") == 4000
    assert g("DADIP2P_QPS", "disk") == pytest.approx(0.2)  # the failed read is an operation
    assert g("DADIP2P_Count", "http") == 1234
    assert g("DADIP2P_MaxLatency", "http") == 500000

    clock.now += 10
    later = parse(telemetry)
    for kind in TYPES:
        assert get(later, "DADIP2P_Read_Throughtput", **NODE, type=kind) == 0
        assert get(later, "DADIP2P_QPS", **NODE, type=kind) == 0
    assert get(later, "DADIP2P_Count", **NODE, type="pread") == 4000, "Count is since start"

    assert get(s, "pollen_layer_bytes_total", **ON_NODE, source="origin") == 500
    assert get(s, "pollen_layer_bytes_total", **ON_NODE, source="root") == 700
    assert get(s, "pollen_layer_bytes_total", **ON_NODE, source="peer") == 800
    assert get(s, "pollen_served_bytes_total", **ON_NODE, to="client") == 1000
    assert get(s, "pollen_served_bytes_total", **ON_NODE, to="peer") == 3000
    assert get(s, "pollen_disk_bytes_total", **ON_NODE, op="write") == 4000
    assert get(s, "pollen_chunk_seconds_count", **ON_NODE, source="root") == 1
    assert get(s, "pollen_http_request_seconds_count", **ON_NODE, port="p2p") == 1


def test_component_counters_at_scrape_time(telemetry: Telemetry) -> None:
    telemetry.rejected("peer")
    telemetry.rejected("layer")
    telemetry.fetched("peer", "10.0.0.3:65002", "", 0, -110, 15.0)
    s = parse(telemetry)
    assert get(s, "pollen_integrity_rejected_total", **ON_NODE, what="cache_chunk") == 3
    assert get(s, "pollen_integrity_rejected_total", **ON_NODE, what="peer_chunk") == 1
    assert get(s, "pollen_integrity_rejected_total", **ON_NODE, what="layer") == 1
    assert get(s, "pollen_fetch_failures_total", **ON_NODE, source="peer") == 1
    assert get(s, "pollen_origin_fallbacks_total", **ON_NODE, reason="root_error") == 5
    assert get(s, "pollen_origin_fallbacks_total", **ON_NODE, reason="no_root") == 3
    assert get(s, "pollen_origin_fallbacks_total", **ON_NODE, reason="size") == 0
    assert get(s, "pollen_p2p_clock_refusals_total", **ON_NODE) == 4
    assert get(s, "pollen_auth_checks_total", **ON_NODE, result="denied") == 7
    assert get(s, "pollen_auth_checks_total", **ON_NODE, result="allowed_cached") == 5
    assert get(s, "pollen_cache_evictions_total", **ON_NODE) == 2
    assert get(s, "pollen_cache_write_errors_total", **ON_NODE) == 4
    assert get(s, "pollen_cache_capacity_bytes", **ON_NODE) == 4096
    info = {"version": "0.1.0", "mode": "agent", "node": NODE["node"], "io_engine": ""}
    assert get(s, "pollen_info", **info) == 1
    peers = telemetry.statistics()["peers"]
    assert peers == [
        {
            "node": "10.0.0.3:65002",
            "role": "peer",
            "state": "failing",
            "chunks": 0,
            "bytes": 0,
            "failures": 1,
            "seen_seconds_ago": 0.0,
        }
    ]


def test_not_alive_while_draining(clock: Clock) -> None:
    t = Telemetry(node="n:1", mode="root", clock=clock)
    t.bind(alive=lambda: False)
    s = parse(t)
    assert get(s, "DADIP2P_Alive", node="n:1", mode="root") == 0
    assert get(s, "DADIP2P_Label", node="n:1", mode="root") == 1  # no operator labels


def test_events_become_audit_records(telemetry: Telemetry) -> None:
    telemetry.served("http:pread", "/https://r/v2/a/blobs/sha256:00", 0, 1000, 0.002)
    telemetry.fetched("origin", "", "/https://r/v2/a/blobs/sha256:00", 0, 500, 0.25)
    telemetry.fetched("peer", "10.0.0.3:65002", "", 0, 800, 0.02)  # not an audited op
    telemetry.disk("fileread", "/c/data", 0, -1, 0.0005)
    assert telemetry.audit.statistics()["pending"] == 3


def test_layer_done_logs_and_counts_cache_bytes(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    times = LayerTimes()
    times.add_bytes("cache", 4096)
    report = LayerReport(
        digest="sha256:00",
        upstream="r",
        repo="a",
        size=4096,
        seconds=0.1,
        result="ok",
        times=times,
    )
    with caplog.at_level("INFO", logger="agent.observe.metrics"):
        telemetry.layer_done(report)
    assert report.line() in caplog.text
    s = parse(telemetry)
    assert get(s, "pollen_layer_bytes_total", **ON_NODE, source="cache") == 4096
    assert get(s, "pollen_layer_pull_seconds_count", **ON_NODE, result="ok") == 1


def request(target: str, method: str = "GET") -> Request:
    return Request(
        method=method, target=target, headers=[], client=("127.0.0.1", 1), conn_id=1, tls=False
    )


async def test_the_exporter_application(telemetry: Telemetry) -> None:
    response = await telemetry.handle(request("/metrics"))
    assert response.status == 200
    assert isinstance(response.body, bytes) and b"DADIP2P_Alive{" in response.body
    assert (b"content-length", str(len(response.body)).encode()) in response.headers
    assert (await telemetry.handle(request("/nope"))).status == 404
    assert (await telemetry.handle(request("/metrics", "POST"))).status == 405
