"""Chaos benchmark: a cluster in network namespaces pulling one image under faults.

    sudo .venv/bin/python bench/chaos.py [--nodes 6] [--roots 2] [--layers 2] [--layer-mib 16]
                                         [--node-mbit 100] [--origin-mbit 200]
                                         [--scenarios baseline,loss,partition,...]

Every scenario builds a fresh cluster (bench/netcluster.py: an origin running Debian's
docker-registry, R roots, N agents, each in its own namespace behind `tc tbf` links), starts
every agent's pull at once (bench/lightpull.py: each blob checked against its digest) and
injects its fault:

  baseline       none: the figures the others are compared with
  loss           2% of the packets every host receives dropped (iptables' statistic match)
  partition      one agent cut off (every packet dropped) for 10 s from 1 s into the pull
  root-kill      the root that owns the first layer SIGKILLed 1.5 s into the pull, for good
  agent-restart  one agent SIGKILLed 1.5 s into the pull and started again a second later;
                 its client's pull fails (its agent died under it) and is run again
  straggler      one agent's links throttled to 2 Mbit/s; the others' P95 is compared with
                 the baseline's (goal: within 1.5x)
  clock          one agent's clock 10 minutes ahead (libfaketime): its requests to roots are
                 refused, it must say so (log and pollen_p2p_clock_refusals) and still pull

For each it prints the pulls that completed (digests checked) or failed, P50/P95, P95 against
the baseline's, the bytes the origin sent (its access log) as a multiple of the image, and
what was checked. Needs root, iproute2, iptables and faketime. Everything it made is removed
at the end (processes by PID, then the namespaces), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netcluster import (  # noqa: E402
    P2P_PORT,
    PROXY_PORT,
    ROOT,
    Host,
    Network,
    node_env,
    origin_bytes,
    percentile,
    pull_command,
    start_node,
    start_origin,
    swarm_status,
    wait_http,
)

sys.path.insert(0, str(ROOT))
from harness import build_image  # noqa: E402
from harness.images import Image  # noqa: E402

from agent.swarm.ownership import rendezvous_order  # noqa: E402

MiB = 1 << 20
SCENARIOS = ("baseline", "loss", "partition", "root-kill", "agent-restart", "straggler", "clock")
PULL_DEADLINE = 600.0  # s: every pull of a scenario ends by then, or counts as hung
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


@dataclass
class Cluster:
    net: Network
    origin: Host
    roots: list[Host]
    agents: list[Host]
    reg_log: Path
    work: Path
    size: int  # bytes of the image (layers and config)
    layer_digests: list[str]


@dataclass
class Outcome:
    name: str
    durations: list[float]  # per agent; nan: that pull failed
    origin: float = 0.0  # bytes the origin sent, x the image
    checks: list[str] = field(default_factory=list)  # what was verified, as text
    problems: list[str] = field(default_factory=list)  # what did not hold


def iptables(host: Host, *rule: str) -> None:
    host.run("iptables", *rule)


def build(
    args: argparse.Namespace, work: Path, image: Image, agent_env: dict[int, dict[str, str]]
) -> Cluster:
    net = Network(f"plc{os.getpid() % 1000}{SCENARIOS.index(work.name)}")
    net.create_hub()
    origin = net.add_host("origin", args.origin_mbit, args.origin_mbit)
    roots = [net.add_host("root", args.node_mbit, args.node_mbit) for _ in range(args.roots)]
    agents = [net.add_host("agent", args.node_mbit, args.node_mbit) for _ in range(args.nodes)]
    cluster = Cluster(
        net,
        origin,
        roots,
        agents,
        start_origin(origin, work, image),
        work,
        sum(layer.size for layer in image.layers) + image.config_size,
        list(image.layer_digests),
    )
    root_list = ",".join(f"{r.address}:{P2P_PORT}" for r in roots)
    for host in roots + agents:
        env = node_env(host, origin, root_list, work, args.chunk)
        if args.keep_logs:
            env["POLLEN_LOG_AUDIT"], env["POLLEN_LOG_AUDIT_MODE"] = "true", "file"
        env.update(agent_env.get(host.index, {}))
        start_node(host, env, work, verbose=bool(args.keep_logs))
    for host in roots + agents:
        wait_http(host, f"http://127.0.0.1:{PROXY_PORT}/readyz")
    return cluster


def pull(host: Host, work: Path, label: str) -> subprocess.Popen[bytes]:
    ref = f"127.0.0.1:{PROXY_PORT}/bench/image:v1"
    return subprocess.Popen(
        ["ip", "netns", "exec", host.netns, *pull_command("light", ref, work / label)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_pulls(
    cluster: Cluster, faults: list[tuple[float, Callable[[], None]]], label: str
) -> list[float]:
    """Every agent pulls at once; `faults` run at their times (s from the start)."""
    started = time.monotonic()
    procs = [pull(h, cluster.work, f"{label}-{h.index}") for h in cluster.agents]
    durations = [math.nan] * len(procs)
    pending = set(range(len(procs)))
    todo = sorted(faults, key=lambda f: f[0])
    while (pending or todo) and time.monotonic() - started < PULL_DEADLINE:
        now = time.monotonic() - started
        while todo and todo[0][0] <= now:
            todo.pop(0)[1]()
        for i in list(pending):
            if procs[i].poll() is not None:
                pending.discard(i)
                if procs[i].returncode == 0:
                    durations[i] = time.monotonic() - started
                else:
                    why = procs[i].stderr.read().decode(errors="replace")[-200:].strip()
                    print(f"  {label}: the pull on {cluster.agents[i].netns} failed: {why}")
        time.sleep(0.02)
    for i in pending:
        procs[i].kill()
        print(f"  {label}: the pull on {cluster.agents[i].netns} HUNG past {PULL_DEADLINE:g} s")
    return durations


def kill(host: Host) -> None:
    """SIGKILL the node's process group: a crash, no draining."""
    proc = host.procs[-1]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def scenario(name: str, args: argparse.Namespace, work: Path, image: Image) -> Outcome:  # noqa: C901
    agent_env: dict[int, dict[str, str]] = {}
    first_agent_index = 1 + args.roots  # host indexes: origin 0, roots, then agents
    if name == "clock":
        agent_env[first_agent_index] = {
            "LD_PRELOAD": FAKETIME[0],
            "FAKETIME": "+10m",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    cluster = build(args, work, image, agent_env)
    victim = cluster.agents[0]
    outcome = Outcome(name, [])
    faults: list[tuple[float, Callable[[], None]]] = []
    try:
        mark = len(cluster.reg_log.read_text(errors="replace").splitlines())
        if name == "loss":
            for host in [cluster.origin, *cluster.roots, *cluster.agents]:
                iptables(host, "-A", "INPUT", "-m", "statistic", "--mode", "random",
                         "--probability", "0.02", "-j", "DROP")  # fmt: skip
        elif name == "partition":
            cut = ("-i", "eth0", "-j", "DROP"), ("-o", "eth0", "-j", "DROP")

            def isolate() -> None:
                iptables(victim, "-A", "INPUT", *cut[0])
                iptables(victim, "-A", "OUTPUT", *cut[1])

            def heal() -> None:
                iptables(victim, "-D", "INPUT", *cut[0])
                iptables(victim, "-D", "OUTPUT", *cut[1])

            faults = [(1.0, isolate), (11.0, heal)]
        elif name == "root-kill":
            nodes = [f"{r.address}:{P2P_PORT}" for r in cluster.roots]
            owner = nodes.index(rendezvous_order(cluster.layer_digests[0], nodes)[0])
            faults = [(1.5, lambda: kill(cluster.roots[owner]))]
            outcome.checks.append(f"killed {cluster.roots[owner].netns}, the first layer's root")
        elif name == "agent-restart":

            def restart() -> None:
                start_node(victim, victim.env, work)

            faults = [(1.5, lambda: kill(victim)), (2.5, restart)]
        elif name == "straggler":
            for netns, dev in ((victim.netns, "eth0"), (cluster.net.hub, f"v{victim.index}")):
                subprocess.run(
                    ["ip", "netns", "exec", netns, "tc", "qdisc", "change", "dev", dev, "root",
                     "tbf", "rate", "2mbit", "burst", "32kb", "latency", "400ms"],
                    check=True, capture_output=True,
                )  # fmt: skip
        durations = run_pulls(cluster, faults, name)
        if name == "agent-restart":
            wait_http(victim, f"http://127.0.0.1:{PROXY_PORT}/readyz")
            if math.isnan(durations[0]):
                outcome.checks.append("the killed agent's client failed, as it must")
                again = run_pulls_one(cluster, victim, f"{name}-again")
                outcome.checks.append(
                    "its pull again after the restart: "
                    + ("ok" if again else "FAILED")
                    + f" ({again:.1f} s)" * bool(again)
                )
                if not again:
                    outcome.problems.append("the restarted agent could not pull")
                durations[0] = math.inf  # failed, as expected: not counted in P95
        outcome.durations = durations
        outcome.origin = origin_bytes(cluster.reg_log, mark) / cluster.size
        if name == "clock":
            refusals = swarm_status(victim, "clock_refusals")
            log = (work / f"agent-{victim.index}.log").read_text(errors="replace")
            said = "our clocks differ" in log
            outcome.checks.append(
                f"skewed agent: {refusals} clock refusals counted, said so: {said}"
            )
            if not (refusals and said):
                outcome.problems.append("the skewed node did not say why it was refused")
        return outcome
    finally:
        cluster.net.close()


def run_pulls_one(cluster: Cluster, host: Host, label: str) -> float:
    started = time.monotonic()
    proc = pull(host, cluster.work, label)
    try:
        proc.wait(timeout=PULL_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        return 0.0
    return time.monotonic() - started if proc.returncode == 0 else 0.0


def report(outcomes: list[Outcome], n: int) -> None:
    base = next((o for o in outcomes if o.name == "baseline"), None)
    base_p95 = percentile([d for d in base.durations if math.isfinite(d)], 95) if base else None
    others_base = (
        percentile([d for d in base.durations[1:] if math.isfinite(d)], 95) if base else None
    )
    print()
    print(f"{'scenario':14s} {'ok':>5s} {'P50':>7s} {'P95':>7s} {'P95/base':>9s} {'origin':>8s}")
    for o in outcomes:
        ok = [d for d in o.durations if math.isfinite(d)]
        failed = sum(1 for d in o.durations if math.isnan(d))
        expected = sum(1 for d in o.durations if d == math.inf)
        p50 = percentile(ok, 50) if ok else math.nan
        p95 = percentile(ok, 95) if ok else math.nan
        ratio = p95 / base_p95 if base_p95 else math.nan
        print(
            f"{o.name:14s} {len(ok):>2d}/{n:<2d} {p50:6.1f}s {p95:6.1f}s {ratio:8.2f}x "
            f"{o.origin:6.2f}xF"
            + (f"  ({failed} failed)" if failed else "")
            + (f"  ({expected} failed as it must)" if expected else "")
        )
        if o.name == "straggler" and others_base and len(o.durations) > 1:
            others = [d for d in o.durations[1:] if math.isfinite(d)]
            if others:
                r = percentile(others, 95) / others_base
                print(
                    f"{'':14s} the others' P95 {percentile(others, 95):.1f}s = {r:.2f} x the "
                    f"baseline's (goal <= 1.5); the straggler took "
                    + (f"{o.durations[0]:.1f}s" if math.isfinite(o.durations[0]) else "FAILED")
                )
        print(f"{'':14s} per node: " + " ".join(f"{d:.1f}" for d in o.durations))
        for check in o.checks:
            print(f"{'':14s} {check}")
        for problem in o.problems:
            print(f"{'':14s} PROBLEM: {problem}")
        if failed:
            print(f"{'':14s} PROBLEM: {failed} pulls failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--roots", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--layer-mib", type=int, default=16)
    parser.add_argument("--node-mbit", type=float, default=100)
    parser.add_argument("--origin-mbit", type=float, default=200)
    parser.add_argument("--chunk", default="1MiB")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--keep-logs", type=Path, help="audit logs on; every log of every scenario kept here"
    )
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        print("bench/chaos.py needs root (network namespaces, tc, iptables)", file=sys.stderr)
        return 2
    if "clock" in names and not FAKETIME:
        print("bench/chaos.py: the clock scenario needs Debian's faketime", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="pollen-bench-chaos-"))
    image = build_image(work / "image", tuple([args.layer_mib * MiB] * args.layers), seed=11)
    outcomes = []
    try:
        for name in names:
            print(f"scenario {name} ...", flush=True)
            run_dir = work / name
            run_dir.mkdir()
            outcomes.append(scenario(name, args, run_dir, image))
    finally:
        if args.keep_logs:
            for log in [*work.glob("*/*.log"), *work.glob("*/log-*/*")]:
                dest = args.keep_logs / log.relative_to(work)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(log.read_bytes())
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(
        f"cluster: {args.nodes} agents + {args.roots} roots at {args.node_mbit:g} Mbit/s, origin "
        f"{args.origin_mbit:g} Mbit/s, image {args.layers} x {args.layer_mib} MiB, "
        f"chunks {args.chunk}; every pull checks each blob against its digest"
    )
    report(outcomes, args.nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
