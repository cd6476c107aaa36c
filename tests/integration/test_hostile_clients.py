"""Hostile clients against a real agent and a real root: resources stay bounded, honest
clients are still served (issue 13's findings 1 and 3, reproduced as the audit found them).

Hostile connections come from their own loopback addresses (127.0.0.66...), as a pod on
the node would; honest clients from the agent's. Counts and sizes come from the agent's
own /proc entry and its status document.
"""

from __future__ import annotations

import concurrent.futures
import glob
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from harness import (
    AgentProcess,
    Image,
    Registry,
    RegistryFront,
    agent_status,
    blob_path_pattern,
    blob_url,
    free_port,
    memory_mib,
    push_image,
    raw_get,
    raw_request,
    wait_until,
)
from test_swarm_cluster import TOKEN, pull_all

from agent.swarm.protocol import PlanTarget
from agent.swarm.signing import request_headers

MiB = 1 << 20
# Debian's faketime (make test installs it): a clock set off for one process.
FAKETIME_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


def rss_mib(agent: AgentProcess, field: str = "VmRSS") -> float:
    assert agent.proc is not None
    return memory_mib(agent.proc.pid, field)


def root_and_agent(
    make_agent: Callable[..., AgentProcess],
    registry: Registry,
    *,
    root_env: dict[str, str] | None = None,
    agent_env: dict[str, str] | None = None,
) -> tuple[AgentProcess, AgentProcess, int]:
    """A root on 127.0.0.2 and an agent on 127.0.0.3 (256 KiB chunks), and their P2P port."""
    p2p_port = free_port("127.0.0.2")
    common = {
        "POLLEN_ROOTS": f"127.0.0.2:{p2p_port}",
        "POLLEN_CLUSTER_TOKEN": TOKEN,
        "POLLEN_P2P_PORT": str(p2p_port),
        "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
    }
    upstream = f"http://{registry.host}"
    root = make_agent(
        upstreams=upstream,
        env={**common, **(root_env or {})},
        address="127.0.0.2",
        role="root",
        name="root",
    )
    agent = make_agent(
        upstreams=upstream, env={**common, **(agent_env or {})}, address="127.0.0.3", name="agent"
    )
    return root, agent, p2p_port


def cut(hits: dict[str, int]) -> int:
    return hits.get("send_timeout", 0) + hits.get("stalled_reclaimed", 0)


@contextmanager
def sockets(
    count: int, address: tuple[str, int], sources: list[str], first: bytes | None
) -> Iterator[list[socket.socket]]:
    """`count` connections spread over `sources`, each sending `first` (if any) and then
    never reading: a 4 KiB receive buffer, so the agent's sends stall at once."""
    with ExitStack() as stack:
        opened = []
        for i in range(count):
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((sources[i % len(sources)], 0))
            sock.settimeout(5)
            sock.connect(address)
            if first:
                sock.sendall(first)
            opened.append(sock)
        yield opened


def test_clients_that_never_read_a_cached_layer_hold_bounded_memory_and_are_cut(
    registry: Registry, make_image: Callable[..., Image], make_agent: Callable[..., AgentProcess]
) -> None:
    """60 clients that GET a cached 9 MiB layer and never read took the agent from 35 to 276
    MiB and kept their connections (and the layer pinned) for good. Now one address gets half
    of the 64 response slots, the rest wait holding nothing, and a send that hands the
    kernel nothing for sendTimeout is cut; an honest client is served meanwhile."""
    image = make_image(layers=(9 * MiB,), seed=131)
    push_image(image, registry, "team/app", "v1")
    [layer] = image.layer_digests
    agent = make_agent(upstreams=f"http://{registry.host}", env={"POLLEN_SEND_TIMEOUT": "4"})
    url = blob_url("team/app", layer)
    assert raw_get(agent.port, url).sha256 == layer  # cached now
    before = rss_mib(agent)
    request = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with sockets(60, ("127.0.0.1", agent.port), ["127.0.0.66"], request):
        wait_until(
            lambda: agent_status(agent)["server"]["waiting_for_response"] >= 28,
            timeout=20,
            what="every hostile request in a slot or waiting for one",
        )
        server = agent_status(agent)["server"]
        assert server["responses"] == 32 and server["waiting_for_response"] == 28, server
        honest = raw_get(agent.port, url)  # from 127.0.0.1: its own half of the slots
        assert honest.status == 200 and honest.sha256 == layer
        held = rss_mib(agent)
        assert held - before < 32 * 4 + 40, f"{before:.0f} -> {held:.0f} MiB"
        # Every stalled send is cut: by a waiter after 2 s without progress, or at
        # sendTimeout; the waiters then get their turn, stall and are cut too.
        wait_until(
            lambda: cut(agent_status(agent)["server"]["limit_hits"]) >= 60,
            timeout=40,
            what="every stalled send cut",
        )
        wait_until(
            lambda: agent_status(agent)["server"]["connections"] <= 1,
            timeout=10,
            what="the hostile connections closed",
        )
    # At the peak: the 32 slots' chunks in use, plus what the buffer pool keeps for reuse
    # (at most 128 MiB idle), plus the interpreter's own.
    assert rss_mib(agent, "VmHWM") - before < 32 * 4 + 128 + 40


def test_idle_connections_cannot_take_every_p2p_slot(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """300 idle TCP connections (no token needed) took all 256 of a root's P2P slots, and a
    signed plan request then waited in the backlog until the agent gave up on the swarm.
    Now at the limit the connection idle longest gives way to the newcomer."""
    image = make_image(layers=(2 * MiB,), seed=132)
    push_image(image, registry, "team/app", "v1")
    root, agent, p2p_port = root_and_agent(
        make_agent,
        registry,
        root_env={"POLLEN_P2P_MAX_CONNECTIONS": "256", "POLLEN_UPSTREAM_TIMEOUT": "5"},
        agent_env={"POLLEN_UPSTREAM_TIMEOUT": "5"},
    )
    sources = ["127.0.0.66", "127.0.0.67", "127.0.0.68"]  # under each address's own limit
    with sockets(300, ("127.0.0.2", p2p_port), sources, None):
        wait_until(
            lambda: agent_status(root)["swarm"]["server"]["connections"] >= 256,
            timeout=20,
            what="the root's P2P slots all taken",
        )
        [got] = pull_all([agent], "team/app:v1", tmp_path / "pull")
    assert image.layer_digests[0] in got
    status = agent_status(agent)["swarm"]
    assert status["origin_fallbacks"] == 0, status["origin_fallback_causes"]
    hits = agent_status(root)["swarm"]["server"]["limit_hits"]
    assert hits.get("idle_reclaimed", 0) >= 1, hits
    assert registry.blob_get_count(image.layer_digests[0]) == 1


def test_a_client_that_stops_reading_a_layer_bigger_than_the_cache_is_dropped(
    registry: Registry, make_image: Callable[..., Image], make_agent: Callable[..., AgentProcess]
) -> None:
    """A 24 MiB layer through an agent whose 8 MiB cache passes it through a ring of slots
    (it serves the swarm too): one client stops reading, and the ring cannot move past the
    chunk it holds. A fast reader sat there until the slow one closed; now the slow one is
    dropped after slowReaderTimeout and the fast one gets the whole layer."""
    image = make_image(layers=(24 * MiB,), seed=133)
    push_image(image, registry, "team/app", "v1")
    [layer] = image.layer_digests
    _root, agent, _ = root_and_agent(
        make_agent,
        registry,
        agent_env={"POLLEN_CACHE_CAPACITY": "8MiB", "POLLEN_SLOW_READER_TIMEOUT": "2"},
    )
    url = blob_url("team/app", layer)
    request = f"GET {url} HTTP/1.1\r\nHost: 127.0.0.3\r\n\r\n".encode()
    with sockets(1, ("127.0.0.3", agent.port), ["127.0.0.66"], request):
        wait_until(  # the slow reader is in before the fast one asks
            lambda: any(d["readers"] for d in agent_status(agent)["layers_in_flight"]),
            timeout=20,
            what="the slow reader reading",
        )
        started = time.monotonic()
        fast = raw_request("127.0.0.3", agent.port, "GET", url, timeout=30)
        assert fast.status == 200 and fast.sha256 == layer
        assert time.monotonic() - started < 20
    log = agent.log_text()
    assert "passes through 16 slots" in log and "held the others back" in log


def test_a_manifest_bigger_than_clients_accept_is_refused_not_held(
    registry: Registry,
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """20 clients that never read a 15 MiB manifest took the agent to 364 MiB. containerd,
    skopeo and the registry itself refuse manifests over 4 MiB; so does the agent now, with
    a 502 that says so, before reading it."""
    front = make_front(registry.url)
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    front.answer(
        r"^/v2/team/app/manifests/huge$",
        b"{" + b" " * (15 * MiB) + b"}",
        headers={"Content-Type": manifest_type},
    )
    agent = make_agent(upstreams=front.url)
    refused = raw_get(agent.port, "/v2/team/app/manifests/huge", timeout=10)
    assert refused.status == 502
    assert b"more than the 4 MiB" in refused.body


def test_manifest_fetches_in_flight_are_capped(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Each manifest fetch holds its manifest whole and costs the registry a request (Docker
    Hub counts them): at most manifestFetchLimit are in flight; the rest wait their turn and
    are served."""
    image = make_image(layers=(64 * 1024,), seed=134)
    push_image(image, registry, "team/app", "v1")
    front = make_front(registry.url)
    front.trickle(r"/manifests/", piece=64, delay=0.05)  # each fetch lasts a while
    agent = make_agent(upstreams=front.url, env={"POLLEN_MANIFEST_FETCH_LIMIT": "2"})
    accept = ("Accept", "application/vnd.oci.image.manifest.v1+json")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(
            pool.map(
                lambda _: raw_get(agent.port, "/v2/team/app/manifests/v1", accept, timeout=60),
                range(6),
            )
        )
    assert all(r.status == 200 and r.body == got[0].body for r in got)
    hits = agent_status(agent)["telemetry"]["limit_hits"]
    assert hits["proxy"]["manifest_fetches"] >= 1, hits


def test_an_access_check_answered_with_a_3xx_that_is_no_redirect_grants_nothing(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Before handing a cached layer out, the agent asks the registry (HEAD) whether this
    client may read it; any 3xx counted as yes. A redirect to object storage (a Location to
    go to) still does; a 304, or a 302 that names no place, is neither yes nor no: 502, and
    the cached bytes stay where they are."""
    image = make_image(layers=(256 * 1024,), seed=135)
    push_image(image, registry, "team/app", "v1")
    [layer] = image.layer_digests
    front = make_front(registry.url)
    agent = make_agent(upstreams=front.url, env={"POLLEN_AUTH_CACHE_TTL": "0"})
    url = blob_url("team/app", layer)
    assert raw_get(agent.port, url).sha256 == layer  # cached now
    pattern = blob_path_pattern(layer)
    for status, headers in ((304, {}), (302, {}), (300, {"Location": "/elsewhere"})):
        front.clear_faults()
        front.fail(pattern, status, methods=("HEAD",), headers=headers)
        refused = raw_get(agent.port, url)
        assert refused.status == 502 and refused.sha256 != layer, status
    front.clear_faults()
    front.redirect(
        pattern, lambda m: f"http://127.0.0.1:9/objects/{m['digest']}", methods=("HEAD",)
    )
    assert raw_get(agent.port, url).sha256 == layer  # object storage: a yes, as before


def test_a_registry_trickling_a_manifest_or_a_layer_is_cut_in_bounded_time(
    registry: Registry,
    make_image: Callable[..., Image],
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """A registry sending a few bytes at a time, each within the read timeout, held a
    manifest fetch (and its client, and a manifestFetchLimit slot) for as long as it liked. A
    body must now bring 64 KiB (or end) per upstreamTimeout. Layer bodies were bounded
    already (a raw read waits for a MiB, or the read timeout): checked here too."""
    image = make_image(layers=(1 * MiB,), seed=136)
    push_image(image, registry, "team/app", "v1")
    [layer] = image.layer_digests
    front = make_front(registry.url)
    front.trickle(r"/manifests/", piece=10, delay=0.5)  # 20 B/s: a minute for the manifest
    front.trickle(blob_path_pattern(layer), piece=100, delay=0.5)  # 200 B/s: 90 min a MiB
    agent = make_agent(
        upstreams=front.url, env={"POLLEN_UPSTREAM_TIMEOUT": "2", "POLLEN_UPSTREAM_RETRIES": "1"}
    )
    accept = ("Accept", "application/vnd.oci.image.manifest.v1+json")
    started = time.monotonic()
    manifest = raw_get(agent.port, "/v2/team/app/manifests/v1", accept, timeout=60)
    assert manifest.status == 502 and b"too slow" in manifest.body
    assert time.monotonic() - started < 15
    started = time.monotonic()
    got = raw_get(agent.port, blob_url("team/app", layer), timeout=60)
    assert got.sha256 != layer  # cut short or refused: never complete, never for ever
    assert time.monotonic() - started < 30
    wait_until(
        lambda: not agent_status(agent)["layers_in_flight"], timeout=10, what="no download left"
    )


def test_a_replayed_plan_request_is_refused_by_a_real_root(
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Anyone on a clear-text path could send a signed plan request again within the 300 s
    of allowed clock skew, and the root acted on it again (a replayed `fresh` forgets what
    the node holds, a replayed `failed` benches a source). Now it answers each once."""
    image = make_image(layers=(512 * 1024,), seed=137)
    push_image(image, registry, "team/app", "v1")
    root, _agent, p2p_port = root_and_agent(make_agent, registry)
    target = PlanTarget(
        digest=image.layer_digests[0],
        upstream=registry.host,
        repo="team/app",
        want=1,
        fresh=True,
        nonce=12345,
    ).target()
    headers = request_headers(TOKEN.encode(), "127.0.0.9:1", "GET", target, time.time())
    lines = [(k.decode(), v.decode()) for k, v in headers]
    first = raw_request("127.0.0.2", p2p_port, "GET", target, lines, timeout=30)
    assert first.status == 200, first.body
    again = raw_request("127.0.0.2", p2p_port, "GET", target, lines, timeout=30)
    assert again.status == 401 and b"replayed" in again.body
    assert agent_status(root)["swarm"]["refused"] >= 1


def test_a_node_whose_clock_is_ten_minutes_off_says_so_and_still_pulls(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """P2P signatures allow 300 s of clock difference. An agent whose clock is 10 minutes
    ahead (libfaketime, for its process only) is refused by the root: it says why, loudly,
    counts it (pollen_p2p_clock_refusals), and its pulls come from the registry meanwhile --
    no silent hang, no silent fallback."""
    image = make_image(layers=(512 * 1024,), seed=138)
    push_image(image, registry, "team/app", "v1")
    assert FAKETIME_LIBS, "libfaketime is missing (Debian's faketime; make test installs it)"
    skewed = {
        "LD_PRELOAD": FAKETIME_LIBS[0],
        "FAKETIME": "+10m",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    _root, agent, _ = root_and_agent(make_agent, registry, agent_env=skewed)
    started = time.monotonic()
    [got] = pull_all([agent], "team/app:v1", tmp_path / "pull")
    assert image.layer_digests[0] in got
    assert time.monotonic() - started < 60
    swarm = agent_status(agent)["swarm"]
    assert swarm["clock_refusals"] >= 1 and swarm["origin_fallbacks"] >= 1, swarm
    assert "our clocks differ" in agent.log_text() and "fix it (NTP)" in agent.log_text()
