"""The swarm with real processes on loopback addresses: a docker-registry origin, two roots,
several agents, real skopeo pulls through each agent at once.

Each node has its own loopback address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is on lo),
its proxy port and its P2P port. What the origin sent is counted at the registry.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Image,
    Registry,
    RegistryFront,
    agent_status,
    blob_path_pattern,
    blob_url,
    cache_blob_dir,
    free_port,
    http_get,
    make_ca_and_cert,
    push_image,
    skopeo_copy_to_dir,
    verify_dir_blobs,
    write_authfile,
)

from agent.swarm.ownership import rendezvous_order

MiB = 1 << 20
TOKEN = "test-cluster-token"


class Cluster:
    def __init__(
        self,
        make_agent: Callable[..., AgentProcess],
        registry: Registry,
        *,
        roots: int,
        agents: int,
        env: dict[str, str] | None = None,
        root_env: dict[str, str] | None = None,
        agent_env: dict[str, str] | None = None,
        upstream: str | None = None,
    ) -> None:
        self.p2p_port = free_port("127.0.0.2")
        addresses = [f"127.0.0.{i}" for i in range(2, 2 + roots + agents)]
        self.root_addresses = addresses[:roots]
        root_list = ",".join(f"{a}:{self.p2p_port}" for a in self.root_addresses)
        common = {
            "POLLEN_ROOTS": root_list,
            "POLLEN_CLUSTER_TOKEN": TOKEN,
            "POLLEN_P2P_PORT": str(self.p2p_port),
            "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
            **(env or {}),
        }
        upstream = upstream or f"http://{registry.host}"
        self.roots = [
            make_agent(
                upstreams=upstream,
                env={**common, **(root_env or {})},
                address=a,
                role="root",
                name=f"root-{a}",
            )
            for a in self.root_addresses
        ]
        self.agents = [
            make_agent(
                upstreams=upstream,
                env={**common, **(agent_env or {})},
                address=a,
                name=f"agent-{a}",
            )
            for a in addresses[roots:]
        ]


def pull_all(
    agents: list[AgentProcess], ref: str, dest: Path, *, creds: tuple[str, str] | None = None
) -> list[set[str]]:
    def one(agent: AgentProcess) -> set[str]:
        out = dest / agent.name
        authfile = None
        if creds:
            authfile = write_authfile(dest / f"{agent.name}-auth.json", {agent.host: creds})
        result = skopeo_copy_to_dir(f"{agent.host}/{ref}", out, authfile=authfile)
        assert result.returncode == 0, f"{agent.name}: {result.stderr}\n{agent.log_text()[-3000:]}"
        return verify_dir_blobs(out)

    with concurrent.futures.ThreadPoolExecutor(len(agents)) as pool:
        return list(pool.map(one, agents))


def assert_every_layer_pulled_once(
    results: list[set[str]], image: Image, registry: Registry
) -> None:
    """Every pull got every layer, and the origin sent each layer once (to its root)."""
    for got in results:
        assert set(image.layer_digests) <= got
    for digest in image.layer_digests:
        assert registry.blob_get_count(digest) == 1, f"origin sent {digest} more than once"


def test_swarm_pull_sends_each_layer_once_from_the_origin(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(3 * MiB, 2 * MiB, 512 * 1024), seed=21)
    push_image(image, registry, "team/app", "v1")
    cluster = Cluster(make_agent, registry, roots=2, agents=4)
    results = pull_all(cluster.agents, "team/app:v1", tmp_path / "pulls")
    assert_every_layer_pulled_once(results, image, registry)
    peer_bytes = sum(agent_status(a)["swarm"]["peer_bytes"] for a in cluster.agents)
    assert peer_bytes >= sum(layer.size for layer in image.layers) * len(cluster.agents) * 0.9
    assert all(agent_status(a)["swarm"]["origin_fallbacks"] == 0 for a in cluster.agents)


def test_skopeo_pulls_layers_whose_heads_cross_the_swarm_in_small_chunks(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """With 2 MiB chunks each layer's first chunks are 1 MiB (agent.cache.chunks): an 11 MiB
    layer in 8 of them and two of 2 MiB and 1 MiB, a 3 MiB one in three; skopeo gets every
    blob whole and right through the swarm, the origin sends each layer once."""
    image = make_image(layers=(11 * MiB, 3 * MiB, 512 * 1024), seed=28)
    push_image(image, registry, "team/heads", "v1")
    cluster = Cluster(
        make_agent, registry, roots=2, agents=3, env={"POLLEN_CACHE_CHUNK_SIZE": "2MiB"}
    )
    results = pull_all(cluster.agents, "team/heads:v1", tmp_path / "pulls")
    assert_every_layer_pulled_once(results, image, registry)
    swarm = [agent_status(a)["swarm"] for a in cluster.agents]
    assert all(s["origin_fallbacks"] == 0 for s in swarm)
    assert sum(s["peer_bytes"] for s in swarm) >= 3 * 14 * MiB


def test_a_root_fetching_one_big_layer_hands_the_next_to_the_other_root(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
    make_front: Callable[..., RegistryFront],
) -> None:
    """Two layers whose rendezvous owner is the same root, pulled at once: that root fetches
    the first from the origin and hands the second to the other root, which fetches it (so each
    root's link carries one layer); every agent follows, and the origin still sends each layer
    once. Each agent GETs both layers at once, as containerd does (skopeo into a directory
    copies one layer after the other); the origin trickles them, so both are in flight when
    the agents ask."""
    front = make_front(registry.url)
    cluster = Cluster(make_agent, registry, roots=2, agents=3, upstream=front.url)
    roots = [f"{a}:{cluster.p2p_port}" for a in cluster.root_addresses]
    for seed in range(40, 80):  # an image whose two layers rendezvous puts on one root
        image = make_image(layers=(2 * MiB, 2 * MiB), seed=seed)
        owners = {rendezvous_order(d, roots)[0] for d in image.layer_digests}
        if len(owners) == 1:
            break
    [owner] = owners
    push_image(image, registry, "team/handoff", "v1")
    for digest in image.layer_digests:
        front.trickle(blob_path_pattern(digest), piece=256 * 1024, delay=0.1)  # ~0.8 s each

    def get(agent: AgentProcess, digest: str) -> str:
        status, _, body = http_get(agent.address, agent.port, blob_url("team/handoff", digest))
        assert status == 200, body[:300]
        return "sha256:" + hashlib.sha256(body).hexdigest()

    pairs = [(a, d) for a in cluster.agents for d in image.layer_digests]
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
        got = list(pool.map(lambda pair: get(*pair), pairs))
    assert got == [d for _, d in pairs]
    for digest in image.layer_digests:
        assert registry.blob_get_count(digest) == 1, f"origin sent {digest} more than once"
    trackers = {
        root: agent_status(process)["swarm"]["tracker"]
        for root, process in zip(roots, cluster.roots, strict=True)
    }
    [(handed, to)] = trackers[owner]["handoffs"].items()
    [other] = [r for r in roots if r != owner]
    assert handed in image.layer_digests and to == other
    taken = {r: set(image.layer_digests) & set(t["layers"]) for r, t in trackers.items()}
    assert taken == {owner: set(image.layer_digests) - {handed}, other: {handed}}
    # The first root's own client follows its handoff too: through the swarm, not the origin.
    assert get(cluster.roots[roots.index(owner)], handed) == handed
    assert registry.blob_get_count(handed) == 1
    assert all(agent_status(a)["swarm"]["origin_fallbacks"] == 0 for a in cluster.agents)


def test_roots_whose_caches_cannot_hold_a_layer_cost_no_pull(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Roots with a 1 MiB cache and a 3 MiB layer: each root answers that the layer does not
    fit, and the agents fetch it from the registry themselves (counted, with the cause). The
    small layer still goes through the swarm. Before, every pull failed with 502."""
    image = make_image(layers=(3 * MiB, 256 * 1024), seed=23)
    push_image(image, registry, "team/big", "v1")
    cluster = Cluster(
        make_agent, registry, roots=2, agents=3, root_env={"POLLEN_CACHE_CAPACITY": "1MiB"}
    )
    results = pull_all(cluster.agents, "team/big:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    big, small = image.layer_digests
    causes = [agent_status(a)["swarm"]["origin_fallback_causes"] for a in cluster.agents]
    assert all(c.get("root_error", 0) >= 1 for c in causes), causes
    assert registry.blob_get_count(small) == 1, "the small layer went through the swarm"
    # Each agent once, and for each agent its owning root once (a root learns that the layer
    # does not fit from the GET's Content-Length, and each agent asks it once).
    assert registry.blob_get_count(big) <= 2 * len(cluster.agents)


def test_agents_with_caches_smaller_than_a_layer_pull_it_through_the_swarm(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Agents whose caches hold 5 MiB (20 chunks) pull a 12 MiB layer at once: each passes it
    through a ring of 16 slots behind its client (the small layer fits beside it), so the
    registry sends it once (to its root) and every agent's bytes come from the swarm. Before,
    every agent fetched it itself."""
    image = make_image(layers=(12 * MiB, 300 * 1024), seed=24)
    push_image(image, registry, "team/huge", "v1")
    cluster = Cluster(
        make_agent, registry, roots=2, agents=4, agent_env={"POLLEN_CACHE_CAPACITY": "5MiB"}
    )
    results = pull_all(cluster.agents, "team/huge:v1", tmp_path / "pulls")
    assert_every_layer_pulled_once(results, image, registry)
    for agent in cluster.agents:
        swarm = agent_status(agent)["swarm"]
        assert swarm["origin_fallbacks"] == 0, swarm
        assert swarm["peer_bytes"] >= 12 * MiB
        assert "passes through 16 slots" in agent.log_text()


def test_an_agent_killed_mid_ring_restarts_and_pulls_through_the_swarm(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
    make_front: Callable[..., RegistryFront],
) -> None:
    """kill -9 of an agent while a layer bigger than its cache passes through its ring: the
    ring is not kept (its chunks were passing through), the restarted agent pulls the layer
    through the swarm again, and the registry still sends it once (to the root)."""
    image = make_image(layers=(8 * MiB,), seed=25)
    push_image(image, registry, "team/ring", "v1")
    [digest] = image.layer_digests
    front = make_front(registry.url)
    front.trickle(blob_path_pattern(digest), piece=256 * 1024, delay=0.08)  # ~2.6 s
    cluster = Cluster(
        make_agent,
        registry,
        roots=1,
        agents=2,
        agent_env={"POLLEN_CACHE_CAPACITY": "4MiB"},
        upstream=front.url,
    )
    victim, other = cluster.agents
    pulling = concurrent.futures.ThreadPoolExecutor(1).submit(
        skopeo_copy_to_dir, f"{victim.host}/team/ring:v1", tmp_path / "killed"
    )
    index = cache_blob_dir(victim.cache_path, digest) / "index"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "\nc " not in _read(index):
        time.sleep(0.05)
    assert "ring=16" in _read(index), "the layer passes through a ring of 16 slots"
    victim.kill()
    assert pulling.result(timeout=60).returncode != 0  # its client saw the crash
    victim.start()
    assert "0 partial kept" in victim.log_text()  # a ring is not kept
    for agent in (victim, other):
        [got] = pull_all([agent], "team/ring:v1", tmp_path / f"after-{agent.name}")
        assert digest in got
    assert registry.blob_get_count(digest) == 1, "the root's GET is still the only one"


def test_a_layer_four_times_every_cache_crosses_the_swarm_from_the_origin_once(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Roots and agents whose caches hold 32 MiB, a 128 MiB layer beside two small ones, four
    agents pulling at once with skopeo: every digest is right, nobody falls back to the
    registry, and the registry's own access log shows it sent at most 1.10 x the image's
    bytes: the owning root streams the big layer through a ring, keeping each chunk until a
    peer holds it (a chunk the swarm loses anyway comes back with a Range request)."""
    image = make_image(layers=(128 * MiB, 2 * MiB, 512 * 1024), seed=26)
    push_image(image, registry, "team/vast", "v1")
    cluster = Cluster(
        make_agent, registry, roots=2, agents=4, env={"POLLEN_CACHE_CAPACITY": "32MiB"}
    )
    results = pull_all(cluster.agents, "team/vast:v1", tmp_path / "pulls")
    for got in results:
        assert set(image.layer_digests) <= got
    total = sum(layer.size for layer in image.layers)
    sent = {d: registry.blob_bytes_sent(d) for d in image.layer_digests}
    assert sum(sent.values()) <= 1.10 * total, (sent, total)
    for agent in cluster.agents:
        swarm = agent_status(agent)["swarm"]
        assert swarm["origin_fallbacks"] == 0, swarm
    _, owner = owner_of(cluster, image.layer_digests[0])
    assert "passes through 64 slots" in owner.log_text(), "the root's ring: half its cache"
    for node in [*cluster.roots, *cluster.agents]:
        used = agent_status(node)["cache"]["used"]
        assert used <= 32 * MiB


def test_a_root_killed_mid_window_costs_no_pull(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """kill -9 of the owning root while a layer 3 x its cache passes through its ring (the
    agents' caches are as small): the agents go on with the other root, or the registry, and
    every pull completes with the right digest: no client sees an error."""
    image = make_image(layers=(24 * MiB,), seed=27)
    push_image(image, registry, "team/ringroot", "v1")
    [layer] = image.layer_digests
    cluster = Cluster(
        make_agent,
        registry,
        roots=2,
        agents=3,
        env={"POLLEN_CACHE_CAPACITY": "8MiB", "POLLEN_THROTTLE_LIMIT_MB": "4"},
    )
    owner, owner_proc = owner_of(cluster, layer)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pulls = pool.submit(pull_all, cluster.agents, "team/ringroot:v1", tmp_path / "pulls")
        # Kill it once its ring (16 slots of its 8 MiB cache) has let chunks go.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _root_passed(owner_proc, layer) <= 16:
            time.sleep(0.05)
        assert _root_passed(owner_proc, layer) > 16, "the root's ring wrapped"
        assert not pulls.done(), "the kill must land mid-layer"
        owner_proc.kill()
        results = pulls.result(timeout=180)
    for got in results:
        assert layer in got


@contextlib.contextmanager
def harness_script(name: str, *args: object) -> Iterator[None]:
    """Run tests/integration/harness/`name` (a small real P2P process) until the block ends;
    it prints "ready" once it serves."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",  # not the script's folder first: harness/agent.py would shadow the package
            str(Path(__file__).parent / "harness" / name),
            *(str(a) for a in args),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def _root_passed(root: AgentProcess, digest: str) -> int:
    """How far the root's download of `digest` got, in chunks (its tracker's view)."""
    tracker = agent_status(root)["swarm"]["tracker"] or {}
    return (tracker.get("layers") or {}).get(digest, {}).get("origin", 0)


def _sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_p2p_port_refuses_unsigned_requests(
    registry: Registry,
    make_agent: Callable[..., AgentProcess],
) -> None:
    cluster = Cluster(make_agent, registry, roots=1, agents=0)
    root = cluster.roots[0]
    conn = http.client.HTTPConnection(root.address, cluster.p2p_port, timeout=10)
    conn.request("GET", "/p2p/v1/chunk/sha256:" + "a" * 64 + "/0")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 401
    assert b"unauthorized" in body
    assert response.getheader("connection") == "close"
    conn.close()
    # The refused connection does not keep one of the port's slots: the root closes it.
    with socket.create_connection((root.address, cluster.p2p_port), timeout=10) as raw:
        raw.sendall(b"GET /p2p/v1/chunk/sha256:" + b"a" * 64 + b"/0 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := raw.recv(65536):  # ends when the root closes (10 s timeout: fails)
            received += chunk
        assert received.startswith(b"HTTP/1.1 401")


def test_no_root_answers_agent_goes_to_the_origin(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(MiB,), seed=22)
    push_image(image, registry, "team/app", "v1")
    dead_port = free_port("127.0.0.9")
    agent = make_agent(
        upstreams=f"http://{registry.host}",
        address="127.0.0.8",
        env={
            "POLLEN_ROOTS": f"127.0.0.9:{dead_port}",
            "POLLEN_CLUSTER_TOKEN": TOKEN,
            "POLLEN_P2P_PORT": str(free_port("127.0.0.8")),
        },
    )
    [got] = pull_all([agent], "team/app:v1", tmp_path / "pulls")
    assert set(image.layer_digests) <= got
    assert agent_status(agent)["swarm"]["origin_fallbacks"] >= 1
    assert "fetching from the origin" in agent.log_text()


def test_root_killed_mid_layer_pull_still_completes(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(6 * MiB,), seed=23)
    push_image(image, registry, "team/app", "v1")
    cluster = Cluster(
        make_agent, registry, roots=2, agents=3, env={"POLLEN_THROTTLE_LIMIT_MB": "4"}
    )
    layer = image.layer_digests[0]
    # Kill whichever root owns the layer once the pulls are under way.

    owner = rendezvous_order(layer, [f"{a}:{cluster.p2p_port}" for a in cluster.root_addresses])[0]
    owner_proc = next(r for r in cluster.roots if owner.startswith(r.address + ":"))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pulls = pool.submit(pull_all, cluster.agents, "team/app:v1", tmp_path / "pulls")
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and registry.blob_get_count(layer, statuses=range(0, 600)) == 0
        ):
            time.sleep(0.05)
        time.sleep(0.5)
        owner_proc.kill()
        results = pulls.result(timeout=120)
    for got in results:
        assert layer in got
    logs = "".join(a.log_text() for a in cluster.agents)
    assert f"{owner} does not answer" in logs, "the agents must have moved to the other root"


def owner_of(cluster: Cluster, digest: str) -> tuple[str, AgentProcess]:

    owner = rendezvous_order(digest, [f"{a}:{cluster.p2p_port}" for a in cluster.root_addresses])[0]
    return owner, next(r for r in cluster.roots if owner.startswith(r.address + ":"))


def test_a_peer_that_serves_wrong_bytes_is_dropped(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """The liar is a small real process speaking the P2P protocol: it claims every chunk of the
    layer at its root and answers every chunk request with random bytes."""
    image = make_image(layers=(4 * MiB,), seed=24)
    push_image(image, registry, "team/app", "v1")
    cluster = Cluster(make_agent, registry, roots=1, agents=3)
    layer = image.layer_digests[0]
    owner, _root = owner_of(cluster, layer)
    liar_port = cluster.p2p_port
    args = ("127.0.0.20", liar_port, owner, TOKEN, registry.host, "team/app", layer)
    with harness_script("liar.py", *args):
        results = pull_all(cluster.agents, "team/app:v1", tmp_path / "pulls")
        for got in results:
            assert layer in got
        logs = "".join(a.log_text() for a in cluster.agents)
        assert f"127.0.0.20:{liar_port} sent a bad chunk" in logs
        assert registry.blob_get_count(layer) == 1


def test_a_root_with_a_self_consistent_wrong_chunk_table_costs_one_attempt_not_the_pull(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    """The agents' only root is a small real process that answers plans with a chunk table
    and chunks that agree with each other but are not the layer: every chunk passes, the
    whole-layer digest does not. No client completes a wrong layer: the first attempt is cut
    before its last byte. The agent distrusts that root for the layer, so the client's next
    attempt comes from the registry and completes (counted as a fallback with its cause)."""
    image = make_image(layers=(3 * MiB,), seed=28)
    push_image(image, registry, "team/lie", "v1")
    [layer] = image.layer_digests
    port = free_port("127.0.0.2")
    with harness_script("lyingroot.py", "127.0.0.21", port, TOKEN, image.layers[0].size, 256 << 10):
        env = {
            "POLLEN_ROOTS": f"127.0.0.21:{port}",
            "POLLEN_CLUSTER_TOKEN": TOKEN,
            "POLLEN_P2P_PORT": str(port),
            "POLLEN_CACHE_CHUNK_SIZE": "256KiB",
        }
        agent = make_agent(
            upstreams=f"http://{registry.host}", env=env, address="127.0.0.22", name="agent-22"
        )
        first = skopeo_copy_to_dir(f"{agent.host}/team/lie:v1", tmp_path / "first")
        assert first.returncode != 0, "a wrong layer never completes"
        written = tmp_path / "first" / layer.split(":")[1]
        assert not written.exists() or f"sha256:{_sha256_file(written)}" == layer
        assert registry.blob_get_count(layer) == 0, "the first attempt went through the liar"
        [got] = pull_all([agent], "team/lie:v1", tmp_path / "second")
        assert layer in got
        assert registry.blob_get_count(layer) == 1
        causes = agent_status(agent)["swarm"]["origin_fallback_causes"]
        assert sum(causes.values()) >= 1, causes
        assert f"roots: not asking 127.0.0.21:{port} about {layer}" in agent.log_text()


def test_a_peer_killed_mid_transfer_costs_no_pull(
    tmp_path: Path,
    registry: Registry,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    image = make_image(layers=(6 * MiB,), seed=25)
    push_image(image, registry, "team/app", "v1")
    cluster = Cluster(
        make_agent, registry, roots=1, agents=4, env={"POLLEN_THROTTLE_LIMIT_MB": "3"}
    )
    layer = image.layer_digests[0]
    victim, survivors = cluster.agents[0], cluster.agents[1:]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        doomed = pool.submit(pull_all, [victim], "team/app:v1", tmp_path / "victim")
        pulls = pool.submit(pull_all, survivors, "team/app:v1", tmp_path / "pulls")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and agent_status(victim)["swarm"]["chunks_served"] == 0:
            time.sleep(0.05)
        served = agent_status(victim)["swarm"]["chunks_served"]
        assert served > 0, "the victim must be serving peers"
        victim.kill()
        results = pulls.result(timeout=120)
        with pytest.raises(AssertionError):
            doomed.result(timeout=60)
    for got in results:
        assert layer in got
    assert registry.blob_get_count(layer) == 1


@pytest.mark.parametrize("tls", [True, False], ids=["p2p-tls", "p2p-plain"])
def test_private_layers_credentials_reach_roots_only_encrypted(
    tmp_path: Path,
    make_registry: Callable[..., Registry],
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
    tls: bool,
) -> None:
    """With TLS on the P2P port the owning root fetches a private layer with the client's
    credentials, once for the cluster. Without TLS credentials never leave the node: the root
    is refused by the origin and every agent fetches the layer itself (the pull still works)."""
    registry = make_registry(auth="htpasswd", users={"alice": "alice-pw"})
    image = make_image(layers=(2 * MiB,), seed=26)
    push_image(image, registry, "private/app", "v1", creds=("alice", "alice-pw"))
    env: dict[str, str] = {}
    if tls:
        addresses = [f"127.0.0.{i}" for i in range(2, 6)]
        files = make_ca_and_cert(tmp_path / "p2p-tls", addresses, prefix="node")
        env = {
            "POLLEN_P2P_TLS_CA": str(files.ca),
            "POLLEN_P2P_TLS_CERT": str(files.cert),
            "POLLEN_P2P_TLS_KEY": str(files.key),
        }
    cluster = Cluster(make_agent, registry, roots=1, agents=3, env=env)
    results = pull_all(
        cluster.agents, "private/app:v1", tmp_path / "pulls", creds=("alice", "alice-pw")
    )
    layer = image.layer_digests[0]
    for got in results:
        assert layer in got
    fallbacks = sum(agent_status(a)["swarm"]["origin_fallbacks"] for a in cluster.agents)
    if tls:
        assert registry.blob_get_count(layer) == 1
        assert fallbacks == 0
    else:
        assert fallbacks >= 1
        assert "no TLS to pass them" in "".join(a.log_text() for a in cluster.agents)
