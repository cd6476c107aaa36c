"""A root's CPU per plan request, measured on a real root process.

One real root (`pollen root`, no debug logging) fetches one layer from a loopback
docker-registry; then N virtual agents, each a real `LayerPlanner` speaking the real P2P
protocol (signed plan requests over HTTP) to that root, pull the layer. Their transfers are
virtual: a transfer "lasts" --transfer-ms, a head chunk its share of it (its `finishing` at
three quarters), no byte moves, so the root's CPU over the run is its control plane alone:
HTTP, signatures, JSON, the tracker and the schedule. The result is what `pollen simulate`
takes as `--root-request-ms` (agent.sim.model.ROOT_REQUEST_S); printed side by side.

    .venv/bin/python bench/rootload.py [--agents 100] [--layer-mib 256] [--chunk 4MiB]

The virtual agents share this process's core with the root's: the root's rate is not the
figure (the machine has 2 cores), its CPU per request is.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import profiling  # noqa: E402
from harness import AgentProcess, Registry, build_image  # noqa: E402
from harness.images import push_image  # noqa: E402
from harness.procs import free_port  # noqa: E402

from agent.cache.chunks import ChunkLayout  # noqa: E402
from agent.http.client import HttpClient  # noqa: E402
from agent.http.tls import make_client_ssl_context  # noqa: E402
from agent.sim.model import ROOT_REQUEST_S, parse_size  # noqa: E402
from agent.swarm.client import P2PClient, PeerError  # noqa: E402
from agent.swarm.planner import Decisions, LayerPlanner  # noqa: E402

MiB = 1 << 20
TOKEN = "bench-root-load-token"
DEADLINE = 600.0  # s for the whole pull by every virtual agent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class VirtualAgent:
    """One node pulling the layer: a real planner, real plan requests, virtual transfers."""

    def __init__(
        self, node: str, client: P2PClient, root: str, layer: dict[str, object], transfer_s: float
    ) -> None:
        self.node, self.client, self.root, self.transfer_s = node, client, root, transfer_s
        self.planner = LayerPlanner(
            digest=str(layer["digest"]),
            upstream=str(layer["upstream"]),
            repo=str(layer["repo"]),
            chunk_size=int(layer["chunk_size"]),  # type: ignore[call-overload]
            expected_size=int(layer["size"]),  # type: ignore[call-overload]
        )
        self.requests = 0
        self.outcome = ""

    async def run(self) -> None:
        send, receive = trio.open_memory_channel[partial[Decisions]](256)
        self._send = send
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._poll_scope: trio.CancelScope | None = None
            decisions = self.planner.start(trio.current_time())
            while not self._carry_out(decisions):
                wake = decisions.wake_at if decisions.wake_at is not None else math.inf
                with trio.move_on_at(wake):
                    event = await receive.receive()
                    decisions = event(trio.current_time())
                    continue
                decisions = self.planner.tick(trio.current_time())
            nursery.cancel_scope.cancel()

    def _carry_out(self, d: Decisions) -> bool:
        if d.error is not None or d.fallback is not None:
            self.outcome = f"{d.error or d.fallback}"
            return True
        if d.size is not None:
            return self._carry_out(self.planner.admitted((), trio.current_time()))
        if d.drop_poll and self._poll_scope is not None:
            self._poll_scope.cancel()
        for transfer in d.start:
            self._nursery.start_soon(self._transfer, transfer.chunk, transfer.source)
        if d.store is not None:
            self._nursery.start_soon(self._store, d.store.chunk, d.store.source)
        for request in d.requests:
            scope = trio.CancelScope()
            if request.poll:
                self._poll_scope = scope
            self._nursery.start_soon(self._ask, request, scope)
        if d.finished:
            self.outcome = "finished"
        return d.finished

    async def _ask(self, request: object, scope: trio.CancelScope) -> None:
        with scope:
            self.requests += 1
            try:
                plan = await self.client.plan(self.root, request, None)  # type: ignore[arg-type]
            except PeerError as exc:
                await self._send.send(
                    partial(self.planner.unanswered, request, self.root, str(exc))
                )
                return
            await self._send.send(partial(self.planner.answered, request, plan, self.root))

    async def _transfer(self, chunk: int, source: str) -> None:
        assert self.planner.layout is not None
        lasts = self.transfer_s * self.planner.layout.part(chunk)  # a head chunk: its share
        await trio.sleep(lasts * 0.75)
        await self._send.send(partial(self.planner.finishing, chunk, source))
        await trio.sleep(lasts * 0.25)
        sha = self.planner.hashes.get(chunk, "")
        await self._send.send(partial(self.planner.received, chunk, source, sha))

    async def _store(self, chunk: int, source: str) -> None:
        await trio.sleep(0.001)
        await self._send.send(partial(self.planner.stored, chunk, source))


async def load(args: argparse.Namespace, root: str, layer: dict[str, object], pid: int) -> None:
    http = HttpClient(make_client_ssl_context(None), timeout=60.0)
    agents = []
    for i in range(args.agents):
        node = f"127.0.{1 + i // 250}.{1 + i % 250}:{20000 + i}"
        client = P2PClient(http, token=TOKEN.encode(), node=node, tls=False)
        agents.append(VirtualAgent(node, client, root, layer, args.transfer_ms / 1000))
    spies = profiling.start(args.profile, [(pid, "root")])
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for agent in agents:
                nursery.start_soon(agent.run)
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    profiling.stop(spies)
    await http.aclose()
    requests = sum(a.requests for a in agents)
    outcomes = {a.outcome for a in agents}
    per = cpu / max(requests, 1)
    chunks = ChunkLayout(size=int(layer["size"]), chunk_size=int(layer["chunk_size"])).count  # type: ignore[call-overload]
    print(
        f"{args.agents} virtual agents pulled {layer['size']} bytes ({chunks} chunks) through "
        f"one root in {wall:.1f}s: {requests} plan requests "
        f"({requests / (args.agents * chunks):.2f} per chunk per agent), outcomes {outcomes}"
    )
    print(
        f"root CPU {cpu:.2f} s: {per * 1000:.3f} ms per plan request "
        f"({requests / max(cpu, 1e-9):.0f} requests per CPU-s); pollen simulate assumes "
        f"{ROOT_REQUEST_S * 1000:.2f} ms (measured / assumed {per / ROOT_REQUEST_S:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--layer-mib", type=int, default=256)
    parser.add_argument("--chunk", default="4MiB")
    parser.add_argument("--transfer-ms", type=float, default=40.0)
    parser.add_argument("--profile", type=Path, help="py-spy the root (raw stacks here)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pollen-bench-rootload-"))
    try:
        image = build_image(work / "image", (args.layer_mib * MiB,), seed=3)
        with Registry(work / "registry") as registry:
            push_image(image, registry, "bench/root", "v1")
            p2p_port = free_port("127.0.0.1")
            env = {
                "POLLEN_CLUSTER_TOKEN": TOKEN,
                "POLLEN_P2P_PORT": str(p2p_port),
                "POLLEN_ROOTS": f"127.0.0.1:{p2p_port}",
                "POLLEN_CACHE_CHUNK_SIZE": args.chunk,
                "POLLEN_LOG_AUDIT": "false",
            }
            root_dir = work / "root"
            with AgentProcess(
                root_dir,
                upstreams=f"http://{registry.host}",
                env=env,
                role="root",
                verbose=False,
            ) as root:
                assert root.proc is not None
                # The root caches the layer first (through its proxy port): its origin
                # download is not the control plane's CPU.
                url = f"{root.url}/v2/bench/root/blobs/{image.layers[0].digest}"
                with urllib.request.urlopen(url, timeout=120) as response:
                    while response.read(1 << 20):
                        pass
                layer = {
                    "digest": image.layers[0].digest,
                    "upstream": registry.host,
                    "repo": "bench/root",
                    "chunk_size": parse_size(args.chunk),
                    "size": image.layers[0].size,
                }
                trio.run(load, args, f"127.0.0.1:{p2p_port}", layer, root.proc.pid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
