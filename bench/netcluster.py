"""A cluster in network namespaces for the benches: the namespaces, links, processes, pulls.

A hub namespace holds a bridge; each host (the origin, roots, agents) gets a namespace of its
own joined to it by a veth pair, an address from 198.18.0.0/24 (the range RFC 2544 sets aside
for benchmarks: no packet leaves the namespaces), and `tc qdisc tbf` on both ends for its
upload and download rates. The origin runs Debian's docker-registry; the nodes run
`python -m agent`. `Network.close()` removes everything, processes first (by PID).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness.images import Image  # noqa: E402
from harness.registry import parse_access_line  # noqa: E402

SUBNET = "198.18.0"
TOKEN = "bench-cluster-token"
PROXY_PORT = 65001
P2P_PORT = 65002
REGISTRY_PORT = 5000


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Host:
    index: int
    netns: str
    address: str
    role: str  # origin, root, agent
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # a Pollen node's, kept for restarts

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns, *args, **kwargs)  # type: ignore[arg-type]

    def spawn(
        self, args: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        return proc


class Network:
    """The namespaces, bridge, veths and shaping; `close()` removes all of it."""

    def __init__(self, tag: str, queue_ms: float = 100.0) -> None:
        self.tag = tag
        self.queue_ms = queue_ms  # each shaped link's FIFO holds this long at its rate
        self.hub = f"{tag}-hub"
        self.hosts: list[Host] = []

    def create_hub(self) -> None:
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")

    def add_host(self, role: str, up_mbit: float, down_mbit: float) -> Host:
        index = len(self.hosts)
        host = Host(index, f"{self.tag}-h{index}", f"{SUBNET}.{index + 1}", role)
        sh("ip", "netns", "add", host.netns)
        self.hosts.append(host)  # from here `close()` removes it, should the rest fail
        veth = f"v{index}"
        sh(
            "ip",
            "-n",
            self.hub,
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.netns,
        )
        sh("ip", "-n", self.hub, "link", "set", veth, "master", "br0", "up")
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        # Upload: the host's own end; download: the hub's end (traffic towards the host).
        shape(host.netns, "eth0", up_mbit, self.queue_ms)
        shape(self.hub, veth, down_mbit, self.queue_ms)
        return host

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs:
                stop(proc)
        for host in self.hosts:
            sh("ip", "netns", "del", host.netns, check=False)
        sh("ip", "netns", "del", self.hub, check=False)


def shape(netns: str, dev: str, mbit: float, queue_ms: float = 100.0) -> None:
    """`tc qdisc tbf` at `mbit`, its FIFO holding `queue_ms` of traffic at that rate."""
    rate_bytes = mbit * 1e6 / 8
    # The burst must hold a GSO segment (64 KiB) and a few ms of traffic.
    burst = max(128 * 1024, int(rate_bytes / 100))
    sh(
        "ip",
        "netns",
        "exec",
        netns,
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        f"{mbit}mbit",
        "burst",
        str(burst),
        "latency",
        f"{queue_ms:g}ms",
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def wait_http(host: Host, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = host.run(
            "python3",
            "-c",
            f"import urllib.request,sys; urllib.request.urlopen('{url}', timeout=2)",
            check=False,
        )
        if result.returncode == 0 or "HTTP Error" in result.stderr:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} in {host.netns} did not answer within {timeout}s")


def swarm_status(host: Host, field: str, section: str = "swarm") -> int:
    """One number of the node's swarm status (its loopback-only status page), e.g.
    ``tracker.plans_answered`` (of a map, e.g. ``tracker.handoffs``: its size); another
    part of the status page with ``section`` (``io_engine``)."""
    url = f"http://127.0.0.1:{PROXY_PORT}/_pollen/status"
    path = "".join(f"[{part!r}]" for part in field.split("."))
    code = (
        "import json, urllib.request; "
        f"status = json.load(urllib.request.urlopen('{url}', timeout=5)); "
        f"value = status[{section!r}]{path}; "
        "print(len(value) if isinstance(value, dict) else value)"
    )
    result = host.run("python3", "-c", code, check=False)
    return int(result.stdout.strip() or 0)


def pull_command(client: str, ref: str, dest: Path, *, ready: bool = False) -> list[str]:
    """skopeo copies the image into an OCI layout (layers at once, as containerd fetches
    them); `light` checks every blob against its digest and keeps nothing (bench/lightpull.py)."""
    if client == "light":
        light = [sys.executable, str(Path(__file__).with_name("lightpull.py"))]
        return [*light, "--ready", ref] if ready else [*light, ref]
    return [
        "skopeo",
        "copy",
        "--quiet",
        "--insecure-policy",
        "--src-tls-verify=false",
        f"docker://{ref}",
        f"oci:{dest}",
    ]


def pull_all(
    hosts: list[Host],
    source: str,
    work: Path,
    label: str,
    client: str = "skopeo",
    *,
    verbose: bool = False,
) -> list[float]:
    """Start a pull on every host at once; return each one's duration. Light clients start
    first and wait (`lightpull.py --ready`): the clock runs from their go, not from Python's
    start-up. `verbose`: print the start on the logs' clock, to trace the pull."""
    light = client == "light"
    procs = []
    for host in hosts:
        dest = work / f"{label}-{host.index}"
        shutil.rmtree(dest, ignore_errors=True)
        ref = source.format(address=host.address)
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *pull_command(client, ref, dest, ready=True)],
                stdin=subprocess.PIPE if light else subprocess.DEVNULL,
                stdout=subprocess.PIPE if light else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for proc in procs if light else []:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        if not ready or proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{label}: a light client did not start within 60 s")
    started = time.monotonic()
    if verbose:
        print(f"{label}: pull starts at {datetime.datetime.now():%H:%M:%S,%f}")
    for proc in procs if light else []:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    durations = [0.0] * len(procs)
    pending = set(range(len(procs)))
    deadline = started + 1800
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            if procs[i].poll() is not None:
                durations[i] = time.monotonic() - started
                pending.discard(i)
                if procs[i].returncode != 0:
                    why = procs[i].stderr.read().decode()[-300:].strip()
                    print(f"{label}: the pull on {hosts[i].netns} failed: {why}")
                    durations[i] = math.nan
        time.sleep(0.02)
    if pending:
        raise RuntimeError(f"{label}: {len(pending)} pulls did not finish")
    return durations


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def origin_bytes(log: Path, since: int) -> int:
    total = 0
    for line in log.read_text(errors="replace").splitlines()[since:]:
        entry = parse_access_line(line)
        if entry and entry["method"] == "GET" and "/blobs/" in entry["path"]:
            total += entry["size"]
    return total


def start_origin(origin: Host, work: Path, image: Image, *more: tuple[str, Image]) -> Path:
    """Debian's docker-registry in the origin's namespace, with `image` pushed to it as
    bench/image:v1 (and each of `more` under its tag); its access log (where origin bytes are
    counted)."""
    reg_dir = work / "registry"
    reg_dir.mkdir()
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(reg_dir / "data")}},
        "http": {"addr": f"0.0.0.0:{REGISTRY_PORT}"},
    }
    (reg_dir / "config.yml").write_text(json.dumps(config))
    reg_log = reg_dir / "access.log"
    origin.spawn(
        ["docker-registry", "serve", str(reg_dir / "config.yml")],
        reg_log,
        env={"PATH": os.environ["PATH"]},
    )
    wait_http(origin, f"http://127.0.0.1:{REGISTRY_PORT}/v2/")
    for tag, pushed in [("v1", image), *more]:
        origin.run(
            "skopeo",
            "copy",
            "--quiet",
            "--insecure-policy",
            "--dest-tls-verify=false",
            f"oci:{pushed.layout_dir}:{pushed.tag}",
            f"docker://127.0.0.1:{REGISTRY_PORT}/bench/image:{tag}",
            timeout=300,
        )
    return reg_log


def node_env(host: Host, origin: Host, roots: str, work: Path, chunk: str) -> dict[str, str]:
    """A node's environment: its address and ports, the origin, its roots, its own cache."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "POLLEN_LISTEN_ADDRESS": "0.0.0.0",
        "POLLEN_NODE_IP": host.address,
        "POLLEN_PROXY_PORT": str(PROXY_PORT),
        "POLLEN_P2P_PORT": str(P2P_PORT),
        "POLLEN_UPSTREAMS": f"http://{origin.address}:{REGISTRY_PORT}",
        "POLLEN_ROOTS": roots,
        "POLLEN_CLUSTER_TOKEN": TOKEN,
        "POLLEN_CACHE_PATH": str(work / f"cache-{host.index}"),
        "POLLEN_LOG_DIR": str(work / f"log-{host.index}"),
        "POLLEN_CACHE_CHUNK_SIZE": chunk,
        "POLLEN_THROTTLE_LIMIT_MB": "100000",
    }


def start_node(
    host: Host, env: dict[str, str], work: Path, *, verbose: bool = False
) -> subprocess.Popen[bytes]:
    """`pollen root` or `pollen agent` (by the host's role) in its namespace (`verbose`: with
    debug logs); the env is kept on the host, so a restart starts the same node."""
    host.env = env
    role = "root" if host.role == "root" else "agent"
    return host.spawn(
        [sys.executable, "-m", "agent", role, *(["-v"] if verbose else [])],
        work / f"{role}-{host.index}.log",
        env={
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)])),
        },
    )
