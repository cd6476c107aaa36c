"""Load benchmark: honest pulls through an agent with and without 500 hostile connections.

    .venv/bin/python bench/load.py [--hostile 500] [--rounds 5] [--layers 3] [--layer-mib 32]

One run pushes an image to a real docker-registry, starts a real agent with its default
limits, warms its cache with one pull, then times `--rounds` skopeo pulls through it twice:
alone (the baseline), and while `--hostile` connections from five other loopback addresses
(127.0.0.66-70, as pods on the node would) attack its proxy port, a third each of
  non-readers:  GET a cached layer and never read (a 4 KiB receive buffer), reopened every
                40 s as a persistent attacker would
  slow heads:   a request head at one byte every 1.5 s, reopened when the agent closes it
  idle:         connect and send nothing, reopened when the agent closes it
It prints the median pull time of each phase and their ratio (the goal: honest pulls keep
>= 80% of their speed), the agent's peak RSS during the attack (the goal: < 512 MiB), its CPU
seconds, and the limits it reported reaching. Everything runs on loopback and is stopped by PID.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import trio  # noqa: E402
from harness import (  # noqa: E402
    AgentProcess,
    Registry,
    agent_status,
    blob_url,
    build_image,
    push_image,
    skopeo_copy_to_dir,
)
from profiling import proc_status  # noqa: E402

MiB = 1 << 20
SOURCES = [f"127.0.0.{i}" for i in range(66, 71)]
NON_READER_LIFETIME = 40.0  # s: past the agent's sendTimeout (30 s), then reopened
HEAD_BYTE_EVERY = 1.5  # s


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def timed_pull(ref: str, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    skopeo_copy_to_dir(ref, dest, check=True)
    return time.perf_counter() - start


class Attack:
    """The hostile connections, run by trio in a thread of their own until `stop`."""

    def __init__(self, port: int, count: int, blob_target: str, deadline: float) -> None:
        self.port = port
        self.count = count
        self.request = f"GET {blob_target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.deadline = deadline  # monotonic: the attack never outlives it
        self.stopping = threading.Event()
        self.opened = 0
        self.open_now = 0
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            kinds = (self._non_reader, self._slow_head, self._idle)
            for i in range(self.count):
                nursery.start_soon(self._loop, kinds[i % 3], SOURCES[i % len(SOURCES)])
                if i % 50 == 49:
                    await trio.sleep(0.05)  # a ramp, not one SYN burst past the backlog
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    async def _loop(self, kind, source: str) -> None:  # noqa: ANN001 - one of the three below
        for _ in range(10_000):  # bounded: reopened at most this often
            sock = trio.socket.socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.bind((source, 0))
                await sock.connect(("127.0.0.1", self.port))
                self.opened += 1
                self.open_now += 1
                try:
                    await kind(sock)
                finally:
                    self.open_now -= 1
            except OSError:
                await trio.sleep(0.2)
            finally:
                sock.close()
            await trio.sleep(0.05)

    async def _non_reader(self, sock: trio.socket.SocketType) -> None:
        await sock.send(self.request)
        await trio.sleep(NON_READER_LIFETIME)

    async def _slow_head(self, sock: trio.socket.SocketType) -> None:
        await sock.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while True:
            await trio.sleep(HEAD_BYTE_EVERY)
            await sock.send(b"a")  # raises once the agent closed it

    async def _idle(self, sock: trio.socket.SocketType) -> None:
        while await sock.recv(1024):  # returns b"" once the agent closes it
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostile", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--ramp", type=float, default=10.0, help="s of attack before timing")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pollen-bench-load-"))
    try:
        image = build_image(work / "image", tuple([args.layer_mib * MiB] * args.layers), seed=3)
        with Registry(work / "registry") as registry:
            push_image(image, registry, "bench/image", "v1")
            agent_env = {"POLLEN_CACHE_CAPACITY": "2GiB"}
            upstreams = f"http://{registry.host}"
            with AgentProcess(
                work / "agent", upstreams=upstreams, env=agent_env, verbose=False
            ) as agent:
                assert agent.proc is not None
                pid = agent.proc.pid
                ref = f"{agent.host}/bench/image:v1"
                timed_pull(ref, work / "warm-up")  # the cache holds the image from here
                base_rss = proc_status(pid, "VmRSS")
                alone = [timed_pull(ref, work / f"alone-{i}") for i in range(args.rounds)]
                target = blob_url("bench/image", image.layer_digests[0])
                budget = args.ramp + args.rounds * 30 + 60
                attack = Attack(agent.port, args.hostile, target, time.monotonic() + budget)
                cpu0 = cpu_seconds(pid)
                peak = [base_rss]
                sampling = threading.Event()

                def sample() -> None:
                    while not sampling.is_set():
                        peak[0] = max(peak[0], proc_status(pid, "VmRSS"))
                        time.sleep(0.1)

                sampler = threading.Thread(target=sample, daemon=True)
                attack.start()
                sampler.start()
                try:
                    time.sleep(args.ramp)
                    opened_at_start = attack.open_now
                    attacked = [timed_pull(ref, work / f"attacked-{i}") for i in range(args.rounds)]
                    limits = agent_status(agent)["server"]
                finally:
                    attack.stop()
                    sampling.set()
                    sampler.join(timeout=5)
                cpu = cpu_seconds(pid) - cpu0
                hwm = proc_status(pid, "VmHWM")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    alone_med, attacked_med = statistics.median(alone), statistics.median(attacked)
    mib = args.layers * args.layer_mib
    print(f"image: {args.layers} x {args.layer_mib} MiB, warm pulls, medians of {args.rounds}")
    print(f"alone:     {alone_med:.2f} s  ({mib / alone_med:.0f} MiB/s)  {fmt(alone)}")
    print(f"attacked:  {attacked_med:.2f} s  ({mib / attacked_med:.0f} MiB/s)  {fmt(attacked)}")
    print(
        f"honest speed under attack: {alone_med / attacked_med:.2f} x alone (goal >= 0.80)"
        f"  with {args.hostile} hostile connections ({opened_at_start} open when timing "
        f"began, {attack.opened} opened in all)"
    )
    print(
        f"agent RSS: {base_rss:.0f} MiB before, peak {peak[0]:.0f} MiB during the attack "
        f"(goal < 512), VmHWM {hwm:.0f} MiB; CPU {cpu:.1f} s over the attack"
    )
    print(f"agent's proxy port: {limits['connections']} connections, limits reached:")
    for name, count in sorted(limits["limit_hits"].items()):
        print(f"  {name:<20} {count}")
    return 0


def fmt(times: list[float]) -> str:
    return "[" + " ".join(f"{t:.2f}" for t in times) + "]"


if __name__ == "__main__":
    sys.exit(main())
