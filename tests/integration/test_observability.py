"""Metrics, audit log, per-layer summary and `pollen status` of real agents with real pulls.

Metrics are read the way Prometheus reads them (scraped over HTTP, parsed with
prometheus-client's parser) and, in one test, by Debian's own `prometheus` server. Audit lines
are matched against the exact format (docs/REFERENCE.md). Everything listens on loopback only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Image,
    Registry,
    RegistryFront,
    blob_path_pattern,
    free_port,
    http_get,
    pull_from,
    push_image,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.swarm.signing import request_headers

MiB = 1 << 20
TOKEN = "observability-token"
TYPES = ("pread", "download", "peer", "disk", "http")
WINDOWED = ("DADIP2P_Read_Throughtput", "DADIP2P_QPS", "DADIP2P_MaxLatency", "DADIP2P_Count")
REPO_ROOT = Path(__file__).resolve().parents[2]

# docs/REFERENCE.md, "Audit log":
# local time|AUDIT|th=<16 hex>|op[pathname=..][offset=..][size=..][latency=..]
AUDIT_RE = re.compile(
    r"^(?P<time>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})\|AUDIT\|th=(?P<th>[0-9A-F]{16})\|"
    r"(?P<op>http:pread|rpc:stat|rpc:pread|download|filewrite|fileread)"
    r"\[pathname=(?P<pathname>[^\]\n]*)\]\[offset=(?P<offset>\d+)\]"
    r"\[size=(?P<size>-?\d+)\]\[latency=(?P<latency>\d+)\]$"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --------------------------------------------------------------------------------------------
# helpers


def scrape(host: str, port: int, path: str = "/metrics") -> tuple[str, Samples]:
    status, headers, body = http_get(host, port, path)
    assert status == 200, body[:500]
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):  # raises on malformed exposition
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, (
        f"no series {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    )
    return samples[key]


def exporter_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "POLLEN_EXPORTER_ENABLE": "1",
        "POLLEN_EXPORTER_PORT": str(port),
        "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
        **extra,
    }


def audit_lines(text: str) -> list[re.Match[str]]:
    return [m for m in map(AUDIT_RE.match, text.splitlines()) if m]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# metrics


def test_exporter_serves_every_documented_series_and_counters_follow_pulls(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(1 * MiB, 768 * 1024, 300 * 1024), seed=41)
    push_image(image, registry, "team/app", "v1")
    port = free_port()
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env=exporter_env(port, POLLEN_LABELS="zone=z1,rack=r7", POLLEN_CACHE_CAPACITY="64MiB"),
    )
    node = {"node": "127.0.0.1:65002", "mode": "agent"}
    _, before = scrape("127.0.0.1", port)

    # Every series of the original, with exactly its labels.
    assert value(before, "DADIP2P_Alive", **node) == 1
    for name in WINDOWED:
        for kind in TYPES:
            got = value(before, name, **node, type=kind)
            # Only the readiness probes have happened: http requests, no data.
            assert got == 0 if kind != "http" else got >= 0, (name, kind, got)
    assert value(before, "DADIP2P_Cache", **node, type="allocated") == 64 * MiB
    assert value(before, "DADIP2P_Cache", **node, type="used") == 0
    assert value(before, "DADIP2P_Label", **node, zone="z1", rack="r7") == 1
    dadi = {k for k in before if k[0].startswith("DADIP2P_")}
    assert len(dadi) == 1 + 4 * 5 + 2 + 1, sorted(dadi)

    pull_from(agent, "team/app:v1", tmp_path / "pull1")
    blob_bytes = sum(layer.size for layer in image.layers) + image.config_size
    _, after = scrape("127.0.0.1", port)
    count = {kind: value(after, "DADIP2P_Count", **node, type=kind) for kind in TYPES}
    assert count["download"] == blob_bytes, "every blob byte came from the origin once"
    assert count["pread"] == blob_bytes, "and was served to the client once"
    assert count["disk"] >= blob_bytes, "every chunk was written to the cache"
    assert count["http"] > blob_bytes, "http counts manifests and blobs"
    assert count["peer"] == 0
    for kind in ("download", "pread", "disk", "http"):
        assert value(after, "DADIP2P_Read_Throughtput", **node, type=kind) > 0, kind
        assert value(after, "DADIP2P_QPS", **node, type=kind) > 0, kind
        assert value(after, "DADIP2P_MaxLatency", **node, type=kind) > 0, kind
    assert value(after, "DADIP2P_Cache", **node, type="used") == blob_bytes
    assert (
        value(after, "pollen_layer_bytes_total", node=node["node"], source="origin") == blob_bytes
    )
    assert value(after, "pollen_served_bytes_total", node=node["node"], to="client") == blob_bytes
    assert value(after, "pollen_chunk_seconds_count", node=node["node"], source="origin") >= 6
    assert value(after, "pollen_layer_pull_seconds_count", node=node["node"], result="ok") == 4
    assert value(after, "pollen_auth_checks_total", node=node["node"], result="allowed") >= 4
    assert value(after, "pollen_cache_used_bytes", node=node["node"]) == blob_bytes
    assert (
        value(after, "pollen_integrity_rejected_total", node=node["node"], what="cache_chunk") == 0
    )
    # Issue 14, item 3: every pollen_* series carries the node of the DADIP2P_* gauges.
    ours = [(name, dict(labels)) for name, labels in after if name.startswith("pollen_")]
    unlabelled = sorted({name for name, labels in ours if labels.get("node") != node["node"]})
    assert ours and not unlabelled, unlabelled

    # A second pull comes from the cache: no download, bytes counted as source=cache.
    pull_from(agent, "team/app:v1", tmp_path / "pull2")
    _, again = scrape("127.0.0.1", port)
    assert value(again, "DADIP2P_Count", **node, type="download") == blob_bytes
    assert value(again, "DADIP2P_Count", **node, type="pread") == 2 * blob_bytes
    assert value(again, "pollen_layer_bytes_total", node=node["node"], source="cache") == blob_bytes
    assert value(again, "pollen_disk_bytes_total", node=node["node"], op="read") >= blob_bytes
    assert value(again, "pollen_auth_checks_total", node=node["node"], result="allowed_cached") >= 4

    # The per-layer summary: one line per layer pull, bytes split by source.
    lines = [ln for ln in agent.log_text().splitlines() if "layer pull digest=" in ln]
    for layer in image.layers:
        mine = [ln for ln in lines if f"digest={layer.digest} " in ln]
        assert len(mine) == 2, mine
        assert f"bytes={layer.size} " in mine[0] and f"from_origin={layer.size} " in mine[0]
        assert "result=ok" in mine[0] and "from_cache=0 " in mine[0]
        assert f"from_cache={layer.size} " in mine[1] and "from_origin=0 " in mine[1]
        for stage in ("slot_s", "auth_s", "transfer_s", "verify_s", "disk_s"):
            assert re.search(rf" {stage}=\d+\.\d{{3}}", mine[0]), (stage, mine[0])


def test_metrics_on_the_proxy_port_when_not_standalone(
    registry: Registry, make_agent: Callable[..., AgentProcess]
) -> None:
    exporter_port = free_port()
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env=exporter_env(exporter_port, POLLEN_EXPORTER_STANDALONE_PORT="false"),
    )
    _, samples = scrape("127.0.0.1", agent.port, "/metrics")
    assert value(samples, "DADIP2P_Alive", node="127.0.0.1:65002", mode="agent") == 1
    with pytest.raises(OSError):
        http_get("127.0.0.1", exporter_port, "/metrics")
    # The scrape itself is an http request on the proxy port.
    _, samples = scrape("127.0.0.1", agent.port, "/metrics")
    assert value(samples, "DADIP2P_QPS", node="127.0.0.1:65002", mode="agent", type="http") > 0


def test_metrics_are_off_unless_enabled(
    registry: Registry, make_agent: Callable[..., AgentProcess]
) -> None:
    agent = make_agent(upstreams=f"http://{registry.host}")
    status, _, _ = http_get("127.0.0.1", agent.port, "/metrics")
    assert status == 404


PROMETHEUS_BIN = "prometheus"


def test_prometheus_server_scrapes_an_agent_and_a_root(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    import shutil

    if shutil.which(PROMETHEUS_BIN) is None:
        pytest.skip("missing prometheus (Debian package prometheus; `make test` installs it)")
    image = make_image(layers=(512 * 1024,), seed=43)
    push_image(image, registry, "team/prom", "v1")
    p2p_port = free_port("127.0.0.2")
    common = {
        "POLLEN_ROOTS": f"127.0.0.2:{p2p_port}",
        "POLLEN_CLUSTER_TOKEN": TOKEN,
        "POLLEN_P2P_PORT": str(p2p_port),
    }
    root_metrics, agent_metrics = free_port("127.0.0.2"), free_port("127.0.0.3")
    upstream = f"http://{registry.host}"
    make_agent(
        upstreams=upstream,
        env={**common, **exporter_env(root_metrics)},
        address="127.0.0.2",
        role="root",
        name="root",
    )
    agent = make_agent(
        upstreams=upstream, env={**common, **exporter_env(agent_metrics)}, address="127.0.0.3"
    )
    pull_from(agent, "team/prom:v1", tmp_path / "pull")

    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: pollen\n    static_configs:\n"
        f"      - targets: ['127.0.0.2:{root_metrics}', '127.0.0.3:{agent_metrics}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--web.enable-lifecycle",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def query(expr: str) -> list[dict]:
            url = f"/api/v1/query?query={urllib.parse.quote(expr)}"
            try:
                status, _, body = http_get("127.0.0.1", web_port, url)
            except OSError:
                return []
            if status != 200:
                return []
            return json.loads(body)["data"]["result"]

        def both_alive() -> list[dict] | None:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()[-2000:]}")
            result = query("DADIP2P_Alive")
            return result if len(result) == 2 else None

        alive = wait_until(
            both_alive,
            timeout=60,
            interval=0.5,
            what="both DADIP2P_Alive series in prometheus",
            on_timeout=lambda: log_path.read_text()[-2000:],
        )
        modes = {r["metric"]["mode"]: r for r in alive}
        assert set(modes) == {"agent", "root"}
        assert modes["root"]["metric"]["node"] == f"127.0.0.2:{p2p_port}"
        assert modes["agent"]["metric"]["node"] == f"127.0.0.3:{p2p_port}"
        assert all(r["value"][1] == "1" for r in alive)
        # The root fetched the layer from the origin; the agent got it from the swarm.
        downloaded = query('DADIP2P_Count{type="download",mode="root"}')
        assert downloaded and float(downloaded[0]["value"][1]) >= image.layers[0].size
        from_peers = query('DADIP2P_Count{type="peer",mode="agent"}')
        assert from_peers and float(from_peers[0]["value"][1]) >= image.layers[0].size
        # Issue 14, item 3: the pollen_* series join the original's by node (they had no
        # node label): the bytes each role got from each source, named by its mode.
        joined = query(
            "sum by (mode, source) (pollen_layer_bytes_total * on (node) group_left (mode) "
            "DADIP2P_Alive)"
        )
        by = {(r["metric"]["mode"], r["metric"]["source"]): float(r["value"][1]) for r in joined}
        assert by[("root", "origin")] >= image.layers[0].size
        assert by[("agent", "root")] + by[("agent", "peer")] >= image.layers[0].size
        assert by[("agent", "origin")] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# audit log


def test_audit_log_on_stdout_with_a_failed_read(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(1 * MiB,), seed=45)
    push_image(image, registry, "team/audit", "v1")
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        env={"POLLEN_LOG_AUDIT": "1", "POLLEN_CACHE_CHUNK_SIZE": "256KiB"},
    )
    layer = image.layers[0]
    whole = image.blob_path(layer.digest).read_bytes()
    path = f"/v2/team/audit/blobs/{layer.digest}"
    pathname = f"/http://{registry.host}/v2/team/audit/blobs/{layer.digest}"
    assert http_get("127.0.0.1", agent.port, path)[2] == whole  # downloaded
    assert http_get("127.0.0.1", agent.port, path)[2] == whole  # from the cache

    def lines_for(op: str) -> list[re.Match[str]]:
        return [m for m in audit_lines(agent.log_text()) if m["op"] == op]

    preads = wait_until(
        lambda: len(lines_for("http:pread")) == 2 and lines_for("http:pread"),
        timeout=10,
        what="two http:pread lines",
    )
    for m in preads:
        assert (m["pathname"], m["offset"], m["size"]) == (pathname, "0", str(len(whole)))
    chunk = 256 * 1024
    chunks = [(offset, min(chunk, layer.size - offset)) for offset in range(0, layer.size, chunk)]
    downloads = lines_for("download")
    assert [(int(m["offset"]), int(m["size"])) for m in downloads] == chunks
    assert all(m["pathname"] == pathname for m in downloads)
    data_file = agent.cache_path / "blobs" / "sha256" / layer.digest.split(":")[1] / "data"
    writes = lines_for("filewrite")
    assert sorted((int(m["offset"]), int(m["size"])) for m in writes) == chunks
    assert all(m["pathname"] == str(data_file) for m in writes)
    reads = lines_for("fileread")
    assert sorted((int(m["offset"]), int(m["size"])) for m in reads[-len(chunks) :]) == chunks

    # Damage chunk 1 on disk: its read fails its checksum (size -1), the client still gets
    # the right bytes (the layer is fetched again).
    with open(data_file, "r+b") as f:
        f.seek(256 * 1024 + 10)
        f.write(b"\xff" * 64)
    assert http_get("127.0.0.1", agent.port, path)[2] == whole
    failed = wait_until(
        lambda: [m for m in lines_for("fileread") if m["size"] == "-1"],
        timeout=10,
        what="a fileread line with a negative size",
    )
    assert failed[0]["offset"] == str(256 * 1024)
    # The audit writer flushes in batches: the second download's lines may trail the read's.
    wait_until(
        lambda: len(lines_for("download")) >= 2 * len(chunks),
        timeout=10,
        what="the damaged layer fetched again (its download lines)",
    )
    assert len(lines_for("download")) == 2 * len(chunks)


def signed_p2p(method: str, host: str, port: int, target: str) -> tuple[int, bytes]:
    headers = {
        k.decode(): v.decode()
        for k, v in request_headers(TOKEN.encode(), "127.0.0.9:1", method, target, time.time())
    }
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_audit_log_file_with_p2p_ops_and_sighup_reopen(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(768 * 1024,), seed=47)
    push_image(image, registry, "team/rpc", "v1")
    layer = image.layers[0]
    p2p_port = free_port("127.0.0.2")
    env = {
        "POLLEN_ROOTS": f"127.0.0.2:{p2p_port}",
        "POLLEN_CLUSTER_TOKEN": TOKEN,
        "POLLEN_P2P_PORT": str(p2p_port),
        "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
        "POLLEN_LOG_AUDIT": "true",
        "POLLEN_LOG_AUDIT_MODE": "file",
    }
    root = make_agent(
        upstreams=f"http://{registry.host}", env=env, address="127.0.0.2", role="root"
    )
    agent = make_agent(upstreams=f"http://{registry.host}", env=env, address="127.0.0.3")
    whole = image.blob_path(layer.digest).read_bytes()
    path = f"/v2/team/rpc/blobs/{layer.digest}"
    assert http_get("127.0.0.3", agent.port, path)[2] == whole

    root_log = root.workdir / "log" / "audit.log"
    agent_log = agent.workdir / "log" / "audit.log"

    def ops(file: Path) -> dict[str, list[re.Match[str]]]:
        out: dict[str, list[re.Match[str]]] = {}
        text = file.read_text() if file.exists() else ""
        lines = text.splitlines()
        matched = audit_lines(text)
        assert len(matched) == len(lines), [ln for ln in lines if not AUDIT_RE.match(ln)]
        for m in matched:
            out.setdefault(m["op"], []).append(m)
        return out

    # The root fetched the layer from the origin and served its chunks to the agent.
    root_ops = wait_until(
        lambda: (o := ops(root_log)) and len(o.get("rpc:pread", [])) >= 3 and o,
        timeout=15,
        what="rpc:pread lines in the root's audit log",
    )
    assert {m["pathname"] for m in root_ops["download"]} == {
        f"/http://{registry.host}/v2/team/rpc/blobs/{layer.digest}"
    }
    chunk_path = f"/p2p/v1/chunk/{layer.digest}/1"
    served = [m for m in root_ops["rpc:pread"] if m["pathname"] == chunk_path]
    assert (
        served and served[0]["offset"] == str(256 * 1024) and served[0]["size"] == str(256 * 1024)
    )
    # rpc:stat: a signed HEAD for a chunk's length; a chunk the root does not hold: -ENOENT.
    assert signed_p2p("HEAD", "127.0.0.2", p2p_port, chunk_path)[0] == 200
    missing = f"/p2p/v1/chunk/sha256:{'0' * 64}/0"
    assert signed_p2p("GET", "127.0.0.2", p2p_port, missing)[0] == 404
    root_ops = wait_until(
        lambda: (
            (o := ops(root_log))
            and "rpc:stat" in o
            and any(m["pathname"] == missing for m in o["rpc:pread"])
            and o
        ),
        timeout=10,
        what="the rpc:stat line and the refused rpc:pread line",
    )
    stat = root_ops["rpc:stat"][0]
    assert (stat["pathname"], stat["size"]) == (chunk_path, str(256 * 1024))
    assert [m["size"] for m in root_ops["rpc:pread"] if m["pathname"] == missing] == ["-2"]

    agent_ops = wait_until(
        lambda: (o := ops(agent_log)) and "http:pread" in o and o,
        timeout=10,
        what="the agent's http:pread line",
    )
    assert "download" not in agent_ops, "the agent got the layer from the swarm"
    chunks = -(-layer.size // (256 * 1024))
    assert len(agent_ops["filewrite"]) == chunks

    # logrotate: move the file away, SIGHUP, and the next lines land in a new file.
    rotated = agent_log.with_name("audit.log.1")
    agent_log.rename(rotated)
    os.kill(agent.proc.pid, signal.SIGHUP)
    wait_until(agent_log.exists, timeout=10, what="audit.log reopened after SIGHUP")
    assert http_get("127.0.0.3", agent.port, path)[2] == whole
    fresh = wait_until(
        lambda: (o := ops(agent_log)) and "http:pread" in o and o,
        timeout=10,
        what="an http:pread line in the new audit.log",
    )
    assert len(fresh["http:pread"]) == 1 and len(fresh["fileread"]) == chunks
    assert len(ops(rotated)["http:pread"]) == 1, "the old file got no new lines"
    assert agent.proc.alive()


# --------------------------------------------------------------------------------------------
# pollen status


def run_pollen(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLEN_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_pollen_status_in_the_middle_of_a_pull(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(4 * MiB,), seed=49)
    push_image(image, registry, "team/slow", "v1")
    layer = image.layers[0]
    with RegistryFront(registry.url) as front:
        # 4 MiB at 64 KiB every 80 ms: about 5 s of body.
        front.trickle(blob_path_pattern(layer.digest), piece=64 * 1024, delay=0.08)
        agent = make_agent(upstreams=front.url, env={"POLLEN_CACHE_CHUNK_SIZE": "512KiB"})
        path = f"/v2/team/slow/blobs/{layer.digest}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(http_get, "127.0.0.1", agent.port, path)

            def halfway() -> dict | None:
                status = json.loads(http_get("127.0.0.1", agent.port, "/_pollen/status")[2])
                layers = status["layers_in_flight"]
                if layers and 0 < layers[0]["received"] < layer.size:
                    return status
                return None

            wait_until(halfway, timeout=20, what="the layer half-way through its download")
            shown = run_pollen("status", "--address", f"127.0.0.1:{agent.port}")
            as_json = run_pollen("status", "--address", f"127.0.0.1:{agent.port}", "--json")
            got = pulling.result(timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "layers in flight: 1" in text, text
    line = next(ln for ln in text.splitlines() if layer.digest[:19] in ln)
    bar = re.search(r"\[(#*)(-*)\]\s+(\d+\.\d)%", line)
    assert bar and len(bar[1]) + len(bar[2]) == 30 and 0 < float(bar[3]) < 100, line
    assert "from origin" in line and ("MiB/s" in line or "KiB/s" in line), line
    assert "I/O engine: pread" in text and "cache:" in text
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    (flying,) = status["layers_in_flight"]
    assert flying["digest"] == layer.digest and flying["size"] == layer.size
    assert 0 < flying["sources"]["origin"] == flying["received"] < layer.size
    assert status["telemetry"]["exporter"]["enabled"] is False
    assert got[0] == 200 and sha256(got[2]) == layer.digest
