"""The kernel's part of a swarm agent's CPU on this machine: what moving a GiB costs with no
Python in the way, to set the agents' CPU per GiB (bench/swarm.py) against.

    .venv/bin/python bench/netfloor.py [--mib 512] [--mbit 200]

A swarm agent, per GiB it receives, receives a GiB from peers, sends about a GiB to peers and
a GiB to its client on loopback, and hashes a GiB (sha256). This measures each of those alone,
in the same way the agent does them (4 MiB reads with a 1 MiB SO_RCVLOWAT, 4 MiB sends with no
unsent-bytes limit), between two network namespaces it creates joined by a veth pair shaped
with `tc qdisc tbf` (as bench/swarm.py does), and on loopback. Each side's CPU comes from its
own rusage; the sum is the floor an agent's CPU per GiB received can approach here, the rest
is software. Needs root (namespaces); removes what it made.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB
NS = ("pfloor-a", "pfloor-b")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receiver(host: str, port: int, total: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen()
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, MiB)
    buffer = memoryview(bytearray(CHUNK))
    start, got = cpu(), 0
    while got < total:
        n = conn.recv_into(buffer, CHUNK)
        if not n:
            break
        got += n
    print(f"{(cpu() - start) / (got / GiB):.3f}", flush=True)


def sender(host: str, port: int, total: int) -> None:
    conn = socket.create_connection((host, port))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, CHUNK)
    data = memoryview(os.urandom(CHUNK))
    start, sent = cpu(), 0
    while sent < total:
        conn.sendall(data)
        sent += CHUNK
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    print(f"{(cpu() - start) / (sent / GiB):.3f}", flush=True)


def pair(prefix: list[str], host: str, total: int) -> tuple[float, float]:
    """Run a receiver and a sender (each under `prefix`, e.g. `ip netns exec X`); their CPU
    seconds per GiB."""
    port = 47000 + os.getpid() % 1000

    def role(name: str) -> list[str]:
        return [sys.executable, __file__, "--role", name, "--host", host, "--port", str(port)]

    size = ["--bytes", str(total)]
    rx = subprocess.Popen([*prefix[:4], *role("rx"), *size], stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
    tx = subprocess.run(
        [*prefix[4:], *role("tx"), *size], capture_output=True, text=True, timeout=600, check=True
    )
    received = float(rx.stdout.readline())
    rx.wait(timeout=60)
    return float(tx.stdout), received


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--mbit", type=float, default=200)
    parser.add_argument("--role", choices=("rx", "tx"))
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--bytes", type=int)
    args = parser.parse_args()
    if args.role == "rx":
        receiver(args.host, args.port, args.bytes)
        return 0
    if args.role == "tx":
        sender(args.host, args.port, args.bytes)
        return 0
    total = args.mib * MiB
    data = os.urandom(CHUNK)
    start, t0 = cpu(), time.perf_counter()
    h = hashlib.sha256()
    for _ in range(total // CHUNK):
        h.update(data)
    sha = (cpu() - start) / (total / GiB)
    lo_tx, lo_rx = pair([], "127.0.0.1", total)
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "pfloor0", "type", "veth", "peer", "name", "pfloor1")
        for i, ns in enumerate(NS):
            sh("ip", "link", "set", f"pfloor{i}", "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"10.77.7.{i + 1}/24", "dev", f"pfloor{i}")
            sh("ip", "-n", ns, "link", "set", f"pfloor{i}", "up")
        sh(
            "ip",
            "netns",
            "exec",
            NS[0],
            "tc",
            "qdisc",
            "add",
            "dev",
            "pfloor0",
            "root",
            "tbf",
            "rate",
            f"{args.mbit}mbit",
            "burst",
            "256kb",
            "latency",
            "50ms",
        )
        veth_tx, veth_rx = pair(
            ["ip", "netns", "exec", NS[1], "ip", "netns", "exec", NS[0]], "10.77.7.2", total
        )
    finally:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    floor = sha + veth_rx + veth_tx + lo_tx
    took = time.perf_counter() - t0
    print(f"CPU seconds per GiB on this machine ({args.mib} MiB each, {took:.0f} s):")
    print(f"  sha256                                  {sha:.2f}")
    veth = f"receive over veth ({args.mbit:g} Mbit/s tbf)"
    print(f"  {veth:<40}{veth_rx:.2f}  (send side {veth_tx:.2f})")
    print(f"  loopback                                send {lo_tx:.2f}, receive {lo_rx:.2f}")
    print(f"  a swarm agent's floor per GiB received: {floor:.2f}")
    print("    (receive from peers + send to peers + send to its client on loopback + sha256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
