"""Swarm benchmark: N nodes pulling the same image at once, against the physical floor.

    sudo .venv/bin/python bench/swarm.py [--nodes 16] [--roots 2] [--layers 2] [--layer-mib 64]
                                         [--node-mbit 100] [--origin-mbit 200] [--chunk 4MiB]
                                         [--sizes-mib 96,32] [--cache 32MiB]

A layer 3x every cache (each node's and each root's; 6 nodes at 200 Mbit/s, origin 400,
layers of 96 and 32 MiB, caches of 32 MiB, chunks of 1 MiB):
    sudo .venv/bin/python bench/swarm.py --small-caches

It builds a cluster in network namespaces it creates: a hub namespace with a bridge, and one
namespace per host (the origin, R roots, N agents) joined to it by a veth pair. Addresses come
from 198.18.0.0/24, the range RFC 2544 sets aside for benchmarks; no packet leaves the
namespaces. `tc qdisc tbf` shapes every host's upload (its veth end) and download (the hub's
end). The origin runs Debian's docker-registry; every agent node pulls the image with skopeo
through its local agent, all at once, into an OCI layout (skopeo then fetches the layers
concurrently, as containerd does; its `dir:` destination takes them one after another). In the
same run every node also pulls straight from the origin (the baseline). It prints per-node
times, P50/P95/max, the bytes the origin sent (from the registry's own access log), CPU use, and
the ratios P95/T_min and P95/direct, where
    T_min = max(F/u_origin, F/d, N·F/(u_origin + Σu))   (Σu counts the roots' uploads too),
and beside them `pollen simulate` of the same cluster: the layers on the roots the agents'
rendezvous order picks, and, where that puts several on one root while another has none, the
layers spread too (T_min leaves out that one root's own link carries its layers in and out).
Everything it made (namespaces, processes, files) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

import profiling  # noqa: E402
import transfers  # noqa: E402
from harness import build_image  # noqa: E402
from harness.images import Image  # noqa: E402
from netcluster import (  # noqa: E402
    P2P_PORT,
    PROXY_PORT,
    Host,
    Network,
    node_env,
    origin_bytes,
    percentile,
    pull_all,
    start_node,
    start_origin,
    swarm_status,
    wait_http,
)

from agent.cache.chunks import ChunkLayout  # noqa: E402
from agent.sim.engine import simulate  # noqa: E402
from agent.sim.model import ROOT_REQUEST_S, SwarmConfig, SwarmResult  # noqa: E402
from agent.sim.model import Mbit as SIM_MBIT  # noqa: E402
from agent.swarm.ownership import placement as placement_of  # noqa: E402
from agent.swarm.ownership import rendezvous_order  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20

# TCP's climb that reproduces this cluster in `pollen simulate` (`SwarmConfig.ramp`): fitted
# at N=8 200/400, N=16 100/200 and one layer at 50/100 Mbit/s, 2-8 MiB chunks, 100 ms queues.
SIM_RAMP = 0.3


def parse_size(text: str) -> int:
    """`4MiB`, `512KiB` or a plain byte count."""
    for suffix, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def cpu_times() -> tuple[float, float, float]:
    """The machine's (total, idle, interrupt) CPU seconds so far; interrupts (irq + softirq)
    are where the namespaces' packet forwarding (veth, bridge, tbf) is charged."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [float(x) / os.sysconf("SC_CLK_TCK") for x in fields]
    return sum(values), values[3] + values[4], values[5] + values[6]


def children_cpu() -> float:
    """CPU seconds of the waited-for children (the pulls: skopeo and its `ip netns exec`)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def profile_target(host: Host) -> tuple[int, str]:
    return host.procs[0].pid, f"{host.role}-{host.index}"


def proc_stat_sum(pids: list[int], fields: tuple[int, ...]) -> int:
    """The sum of these /proc/PID/stat fields (numbered from 1, as proc(5) does) over the
    processes still running."""
    total = 0
    for pid in pids:
        try:
            values = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(values[field - 3]) for field in fields)  # values start at field 3
    return total


def minor_faults(pids: list[int]) -> int:
    """Minor page faults these processes took so far: each one is a page of memory touched
    for the first time (zero-filled by the kernel), a cost that follows fresh memory."""
    return proc_stat_sum(pids, (10,))


def process_cpu(pids: list[int], *, system_only: bool = False) -> float:
    """CPU seconds (user + system, or system alone) used so far by these processes."""
    ticks = proc_stat_sum(pids, (15,) if system_only else (14, 15))
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pids: list[int]) -> float:
    """The largest peak resident set (VmHWM) among these processes still running, MiB."""
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    return max((profiling.proc_status(pid, "VmHWM") for pid in alive), default=0.0)


def run_queue_wait(pids: list[int]) -> float:
    """Seconds these processes' threads have waited, runnable, for a core (schedstat): the
    CPU contention of many processes on few cores, which averages hide."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def report_simulated(
    args: argparse.Namespace, image: Image, root_nodes: list[str], p95: float
) -> None:
    """The simulation of this run beside it; where rendezvous alone put several layers on one
    root, also the simulation without the roots' handoffs (that one root's own link would
    carry those layers in and out: T_min leaves that out)."""
    owners = placement(args, image, root_nodes, handoffs=True)
    sim = simulated(args, image, root_nodes, owners)
    print(
        f"simulated P95 {sim.p95:6.1f}s  (pollen simulate: same nodes, links, layers and roots, "
        f"rtt {args.sim_rtt_ms:g} ms); measured / simulated {p95 / sim.p95:5.2f}; its links "
        f"moved {sim.link_use:.0%} of their rate while a transfer was in, and a layer's "
        f"download stood empty between its transfers {sim.lane_idle:.0%} of its span "
        "(measured: --verbose prints the traced transfers)"
    )
    tcp = simulated(args, image, root_nodes, owners, ramp=SIM_RAMP)
    print(
        f"simulated P95 {tcp.p95:6.1f}s  with TCP's climb (--ramp {SIM_RAMP:g}: each larger "
        f"share taken over {SIM_RAMP:g} chunk times, as fitted to this cluster); measured / "
        f"simulated {p95 / tcp.p95:5.2f}; links moved {tcp.link_use:.0%} while receiving, by "
        f"fifth of each pull {' '.join(f'{u:.0%}' for u in tcp.phase_use)}"
    )
    alone = placement(args, image, root_nodes, handoffs=False)
    if alone != owners:
        alt = simulated(args, image, root_nodes, alone)
        print(
            f"simulated P95 {alt.p95:6.1f}s  without handoffs (rendezvous puts "
            f"{max(map(alone.count, alone))} layers on one root): handoffs give "
            f"{alt.p95 / sim.p95:4.2f} x"
        )


def placement(
    args: argparse.Namespace, image: Image, root_nodes: list[str], *, handoffs: bool
) -> tuple[int, ...]:
    """The root each layer lands on, as the layers are asked for at once: the first in the
    agents' rendezvous order for it, or (`handoffs`) the next when that root is busy with an
    earlier big layer (`agent.swarm.ownership.placement`)."""
    chunk = parse_size(args.chunk)
    if handoffs:
        asked = [
            (d, -(-layer.size // chunk))
            for d, layer in zip(image.layer_digests, image.layers, strict=True)
        ]
        owners = placement_of(asked, root_nodes)
    else:
        owners = [rendezvous_order(digest, root_nodes)[0] for digest in image.layer_digests]
    return tuple(root_nodes.index(owner) for owner in owners)


def simulated(
    args: argparse.Namespace,
    image: Image,
    root_nodes: list[str],
    owners: tuple[int, ...],
    ramp: float = 0.0,
) -> SwarmResult:
    """`pollen simulate` of this very run with the layers on the roots `owners` names, every
    layer pulled at once (as skopeo does), the config blob left out (431 bytes); `ramp`:
    TCP's climb to a larger share (0: fluid links)."""
    link = args.node_mbit * SIM_MBIT
    config = SwarmConfig(
        nodes=args.nodes,
        layers=tuple(layer.size for layer in image.layers),
        chunk_size=parse_size(args.chunk),
        upload=link,
        download=link,
        origin=args.origin_mbit * SIM_MBIT,
        roots=len(root_nodes),
        owners=owners,
        tiers=args.tiers,
        root_request_s=ROOT_REQUEST_S,
        latency=args.sim_rtt_ms / 1000,
        store_delay=0.015,  # traced: sha256, the disk write, then the report
        ramp=ramp,
        node_cache_chunks=parse_size(args.cache) // parse_size(args.chunk) if args.cache else None,
    )
    return simulate(config)


TCP_COUNTERS = ("TcpOutSegs", "TcpRetransSegs", "TcpActiveOpens")


# Status counters the bench prints, as (section of the status page, field).
ROOT_COUNTERS = [("swarm", f) for f in ("tracker.plans_answered", "tracker.handoffs")]
ROOT_COUNTERS += [("swarm", "bytes_served")]
AGENT_COUNTERS = [("swarm", f) for f in ("relayed", "waited_for_landing", "landing_wait_ms")]
AGENT_COUNTERS += [("swarm", "sealed_layers"), ("swarm", "rehashed_bytes")]
AGENT_COUNTERS += [("io_engine", "buffers.created_bytes"), ("io_engine", "bytes_read")]
Counters = dict[tuple[int, str, str], int]


def status_counters(roots: list[Host], agents: list[Host]) -> Counters:
    """The status counters the bench prints, per (host, section, counter), as they stand."""
    hosts = [(h, ROOT_COUNTERS) for h in roots] + [(h, AGENT_COUNTERS) for h in agents]
    return {
        (h.index, section, f): swarm_status(h, f, section)
        for h, fields in hosts
        for section, f in fields
    }


def status_since(before: Counters, field: str, hosts: list[Host], section: str = "swarm") -> int:
    """A status counter summed over `hosts`, less what it stood at in `before`."""
    return sum(
        swarm_status(h, field, section) - before.get((h.index, section, field), 0) for h in hosts
    )


def print_traced(work: Path, since: float, chunk: int, node_mbit: float, roots: list[Host]) -> None:
    """bench/transfers.py's summary of the transfers the agents traced (debug logs) since
    `since`: a warm-up pull's are left out."""
    traced = []
    for log in sorted(work.glob("agent-*.log")):
        with log.open(errors="replace") as lines:
            traced += [t for t in transfers.parse(log.stem, lines, chunk) if t.began >= since]
    seconds = chunk * 8 / (node_mbit * 1e6)
    for line in transfers.report(traced, seconds, {r.address for r in roots}):
        print(f"swarm (traced): {line}")


def tcp_counters(hosts: list[Host]) -> dict[str, int]:
    """Every host's TCP counters so far, summed: segments sent and retransmitted (a
    retransmission is a segment a tbf queue dropped, or that arrived too late, and costs its
    flow a round trip or a timeout) and connections opened (each costs both ends a connect,
    an accept and a close: the agents should reuse theirs)."""
    sums = dict.fromkeys(TCP_COUNTERS, 0)
    for host in hosts:
        out = host.run("nstat", "-asz", *TCP_COUNTERS)
        for line in out.stdout.splitlines():
            name, _, rest = line.partition(" ")
            if name in sums:
                sums[name] += int(rest.split()[0])
    return sums


def layer_chunks(size: int, chunk: int) -> int:
    """The chunks a layer of `size` bytes has: the agents' layout (a head of small ones)."""
    return ChunkLayout(size=size, chunk_size=chunk).count


def print_swarm_counters(
    args: argparse.Namespace,
    work: Path,
    image: Image,
    began: float,
    before: Counters,
    roots: list[Host],
    agents: list[Host],
    agent_pids: list[int],
    root_pids: list[int],
) -> None:
    """What the nodes counted during the swarm pull: memory, plan requests, cut-through,
    handoffs, seals (and with --verbose the traced transfers)."""
    N = len(agents)
    blobs = [layer.size for layer in image.layers] + [image.config_size]
    print(
        f"swarm: peak resident memory (VmHWM): agents up to "
        f"{peak_rss_mib(agent_pids):.0f} MiB, roots up to "
        f"{peak_rss_mib(root_pids):.0f} MiB (goal: an agent under 1 GiB)"
    )
    chunk = parse_size(args.chunk)
    chunks = sum(layer_chunks(layer.size, chunk) for layer in image.layers)
    plans = status_since(before, "tracker.plans_answered", roots)
    print(
        f"swarm: the roots answered {plans} plan requests, "
        f"{plans / max(N * chunks, 1):.1f} per chunk per agent "
        f"({N} agents x {chunks} chunks)"
    )
    relayed = status_since(before, "relayed", agents)
    waited = status_since(before, "waited_for_landing", agents) + relayed
    wait_ms = status_since(before, "landing_wait_ms", agents)
    print(
        f"swarm: {waited} peer requests came for a chunk in its last bytes (cut-"
        f"through; {relayed} got its bytes in so far at once) and waited "
        f"{wait_ms / max(waited, 1):.0f} ms on average for the rest"
    )
    handed = status_since(before, "tracker.handoffs", roots)
    plural = "" if handed == 1 else "s"
    print(f"swarm: the roots handed {handed} layer{plural} to the next root (handoffs)")
    if args.verbose:  # the agents traced every transfer: read them back
        print_traced(work, began, chunk, args.node_mbit, roots)
    sealed = status_since(before, "sealed_layers", agents)
    rehashed = status_since(before, "rehashed_bytes", agents)
    print(
        f"swarm: {sealed} of {N * len(blobs)} blobs on the agents verified by the "
        f"root's seal; {rehashed / MiB:.0f} MiB hashed a second time"
    )


def print_summary(
    args: argparse.Namespace,
    image: Image,
    sizes: list[int],
    roots: list[Host],
    results: dict[str, tuple[list[float], int, float, float]],
) -> None:
    """The cluster, its floor T_min, and each run's percentiles against it (and the swarm's
    simulation beside it)."""
    N, F = args.nodes, image_size(image)
    u = d = args.node_mbit * 1e6 / 8
    u_o = args.origin_mbit * 1e6 / 8
    sum_u = (N + args.roots) * u
    t_min = max(F / u_o, F / d, N * F / (u_o + sum_u))
    print()
    print(
        f"cluster: {N} agents + {args.roots} roots, {args.node_mbit:g} Mbit/s per node, "
        f"origin {args.origin_mbit:g} Mbit/s, image {F / MiB:.0f} MiB "
        f"(layers of {', '.join(str(s) for s in sizes)} MiB), chunk {args.chunk}"
        + (f", caches {args.cache}" if args.cache else "")
        + (f" (roots {args.root_cache})" if args.root_cache else "")
        + f", link queues {args.queue_ms:g} ms"
    )
    print(
        f"T_min = max(F/u_o {F / u_o:.1f}s, F/d {F / d:.1f}s, "
        f"N·F/(u_o+Σu) {N * F / (u_o + sum_u):.1f}s) = {t_min:.1f}s"
    )
    p95_direct = None
    if "direct" in results:
        p95_direct = percentile([x for x in results["direct"][0] if not math.isnan(x)], 95)
    for label, (all_durations, sent, busy, _) in results.items():
        durations = [x for x in all_durations if not math.isnan(x)]
        if len(durations) < len(all_durations):
            print(f"{label}: {len(all_durations) - len(durations)} of {N} pulls FAILED")
        if not durations:
            continue
        p50, p95 = percentile(durations, 50), percentile(durations, 95)
        line = (
            f"{label:7s} P50 {p50:6.1f}s  P95 {p95:6.1f}s  max {max(durations):6.1f}s  "
            f"P95/T_min {p95 / t_min:5.2f}  origin bytes {sent / F:5.2f} x F  "
            f"CPU busy {busy:4.0%}"
        )
        if p95_direct and label != "direct":
            line += f"  P95/direct {p95 / p95_direct:5.2f}"
        print(line)
        print("        per node: " + " ".join(f"{x:.1f}" for x in durations))
        if label == "swarm":
            report_simulated(args, image, [f"{r.address}:{P2P_PORT}" for r in roots], p95)


def image_size(image: Image) -> int:
    """F: every blob of the image, its config included."""
    return sum(layer.size for layer in image.layers) + image.config_size


def measure_run(
    args: argparse.Namespace,
    work: Path,
    image: Image,
    label: str,
    source: str,
    reg_log: Path,
    roots: list[Host],
    agents: list[Host],
) -> tuple[list[float], int, float, float]:
    """Every agent pulls from `source` at once; what it cost (CPU by role, TCP, the origin's
    bytes) is printed. Returns the pulls' durations, the origin's bytes, the machine's busy
    share and the longest pull."""
    N, F = len(agents), image_size(image)
    mark = len(reg_log.read_text(errors="replace").splitlines())
    # The nodes' status counters run from their start: a warm-up pull's come off.
    before = status_counters(roots, agents) if args.warm else {}

    pollen_pids = [p.pid for h in roots + agents for p in h.procs]
    root_pids = [p.pid for h in roots for p in h.procs]
    agent_pids = [p.pid for h in agents for p in h.procs]
    cpu0 = process_cpu(pollen_pids)
    root0 = process_cpu(root_pids)
    agent_sys0 = process_cpu(agent_pids, system_only=True)
    faults0 = minor_faults(agent_pids)
    total0, idle0, irq0 = cpu_times()
    clients0 = children_cpu()
    tcp0 = tcp_counters(roots + agents)
    waited0 = run_queue_wait(agent_pids)
    spies = (
        profiling.start(args.profile, [profile_target(agents[0]), profile_target(roots[0])])
        if label == "swarm"
        else []
    )
    counting = args.task_cpu and label == "swarm"
    if counting:
        counted = profiling.task_cpu_snapshot(work / "task-cpu", pollen_pids)
    began = time.time()
    durations = pull_all(agents, source, work, label, args.client, verbose=args.verbose)
    profiling.stop(spies)
    if counting:
        after = profiling.task_cpu_snapshot(work / "task-cpu", pollen_pids)
        chunks = N * sum(layer_chunks(layer.size, parse_size(args.chunk)) for layer in image.layers)
        for who, pids in (("agents", agent_pids), ("roots", root_pids)):
            profiling.print_task_cpu(who, counted, after, pids, chunks)
    total1, idle1, irq1 = cpu_times()
    clients = children_cpu() - clients0
    busy = 1 - (idle1 - idle0) / max(1e-9, total1 - total0)
    used = (total1 - total0) - (idle1 - idle0)
    pollen_cpu = process_cpu(pollen_pids) - cpu0
    root_cpu = process_cpu(root_pids) - root0
    agent_sys = process_cpu(agent_pids, system_only=True) - agent_sys0
    wall = max([x for x in durations if not math.isnan(x)], default=0.0) or 1e-9
    print(
        f"{label}: pollen processes used {pollen_cpu:.1f} CPU-s "
        f"({pollen_cpu / wall:.2f} cores of {os.cpu_count()}; roots {root_cpu:.1f}, "
        f"agents {pollen_cpu - root_cpu:.1f}) over {wall:.1f}s; the machine was "
        f"{busy:.0%} busy ({used:.1f} CPU-s in all: pollen {pollen_cpu:.1f}, the "
        f"clients {clients:.1f}, interrupts (packet forwarding) {irq1 - irq0:.1f}, "
        f"the rest {used - pollen_cpu - clients - (irq1 - irq0):.1f})"
    )
    waited = run_queue_wait(agent_pids) - waited0
    tcp = {k: v - tcp0[k] for k, v in tcp_counters(roots + agents).items()}
    out_segs, resent = tcp["TcpOutSegs"], tcp["TcpRetransSegs"]
    print(
        f"{label}: TCP of the nodes sent {out_segs} segments, retransmitted {resent} "
        f"({resent / max(out_segs, 1):.2%}: drops at the shaped links), opened "
        f"{tcp['TcpActiveOpens']} connections; the agents "
        f"waited {waited:.2f} s in all for a core ({waited / len(agents):.2f} s each, "
        f"{waited / len(agents) / wall:.0%} of the pull)"
    )
    sent = origin_bytes(reg_log, mark)
    print(f"{label}: done in {wall:.1f}s, origin sent {sent / F:.2f} x F, CPU busy {busy:.0%}")
    if label == "swarm":
        received = N * F / GiB  # what the agents received (and their clients read)
        per_root = root_cpu / max(sent / GiB, 1e-9)
        uploaded = status_since(before, "bytes_served", roots) / GiB
        root_goal = 2.0 * sent / GiB + 0.2 * uploaded
        print(
            f"swarm: CPU per GiB: agents {(pollen_cpu - root_cpu) / received:.1f} s per "
            f"GiB received ({agent_sys / received:.1f} of it in the kernel; goal <= 2.0; "
            "bench/netfloor.py gives the floor), roots "
            f"{per_root:.1f} s per GiB fetched from "
            f"the origin, their uploads ({uploaded:.2f} GiB) included; the goal (2.0 per GiB "
            f"fetched + 0.2 per GiB uploaded) allows the roots {root_goal:.2f} CPU-s, they used "
            f"{root_cpu:.2f} ({root_cpu / max(root_goal, 1e-9):.1f} x)"
        )
        faults = minor_faults(agent_pids) - faults0
        fresh = status_since(before, "buffers.created_bytes", agents, "io_engine")
        peaks = [swarm_status(h, "buffers.peak_in_use_bytes", "io_engine") for h in agents]
        read_back = status_since(before, "bytes_read", agents, "io_engine") / GiB / received
        print(
            f"swarm: the agents took {faults * os.sysconf('SC_PAGE_SIZE') / received / GiB:.2f} "
            f"GiB of page faults per GiB received ({fresh / received / GiB:.2f} "
            "GiB per GiB in new chunk buffers: the rest were recycled); buffers in use at once "
            f"up to {max(peaks) / MiB:.0f} MiB on an agent; they read {read_back:.2f} GiB "
            "back from their caches per GiB received (chunks no longer in memory)"
        )
        print_swarm_counters(args, work, image, began, before, roots, agents, agent_pids, root_pids)
    return durations, sent, busy, wall


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--roots", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--layer-mib", type=int, default=64)
    parser.add_argument("--node-mbit", type=float, default=100)
    parser.add_argument("--origin-mbit", type=float, default=200)
    parser.add_argument("--chunk", default="4MiB")
    parser.add_argument(
        "--sizes-mib", help="layer sizes instead of --layers x --layer-mib, e.g. 96,32"
    )
    parser.add_argument("--cache", help="cache.capacity of every agent and root, e.g. 32MiB")
    parser.add_argument("--root-cache", help="cache.capacity of the roots (default: --cache)")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument(
        "--sim-rtt-ms",
        type=float,
        default=15.0,
        help="plan round trip for the simulation printed beside the run (15: as traced here)",
    )
    parser.add_argument(
        "--client",
        choices=("skopeo", "light"),
        default="skopeo",
        help="who pulls on each node: skopeo (writes its copy: ~10 CPU-s per GiB here) or "
        "light (bench/lightpull.py: checks each blob's digest, keeps nothing), so that the "
        "machine's CPU goes to the swarm",
    )
    parser.add_argument(
        "--o-direct",
        action="store_true",
        help="caches with cache.aioEnable=1 (O_DIRECT): no page-cache pages to allocate, which "
        "in a VM cost the kernel far more than the copy",
    )
    parser.add_argument(
        "--keep-logs", type=Path, help="copy every process's log and audit log here"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="debug logs (with --keep-logs: to trace a pull)"
    )
    parser.add_argument(
        "--queue-ms",
        type=float,
        default=100.0,
        help="each shaped link's FIFO, in ms of traffic at its rate (100: the figures so far). "
        "A switch port or NIC queue holds far less; a deep FIFO delays the ACKs and plan "
        "replies that share a loaded link with data (a root's copies took 2 x the link's time "
        "behind its origin download, 1.6 x at 10 ms)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample one agent and one root with py-spy during the swarm pull (raw stacks "
        "here) and print their top frames",
    )
    parser.add_argument(
        "--task-cpu",
        action="store_true",
        help="count the CPU of every trio task of every agent and root during the swarm pull "
        "(bench/taskcpu) and print the biggest, per chunk received",
    )
    parser.add_argument(
        "--tiers",
        action="store_true",
        help="roots in tiers: agent i lists only root i mod K (its group's), every root has "
        "all roots as parentRoots",
    )
    parser.add_argument(
        "--small-caches",
        action="store_true",
        help="the scenario 'a layer 3x every cache': 6 nodes at 200 Mbit/s, origin 400, "
        "layers of 96 and 32 MiB, every cache 32 MiB, 1 MiB chunks",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="every agent first pulls another image of the same sizes through the swarm, "
        "unmeasured, so that the measured pull finds the agents as a long-running node would "
        "(memory buffers touched, connections to roots and peers open, code warm); without "
        "it, the agents are fresh processes",
    )
    args = parser.parse_args()
    if args.small_caches:
        args.nodes, args.node_mbit, args.origin_mbit = 6, 200.0, 400.0
        args.sizes_mib, args.cache, args.chunk = "96,32", "32MiB", "1MiB"
    return args


def start_nodes(
    args: argparse.Namespace, work: Path, origin: Host, roots: list[Host], agents: list[Host]
) -> None:
    """Every root and agent, configured from the flags, up and ready."""
    root_list = ",".join(f"{r.address}:{P2P_PORT}" for r in roots)
    for i, host in enumerate(roots + agents):
        # Tiers: each root answers its own group (agents i mod K) and fetches through all.
        group = i if i < len(roots) else (i - len(roots)) % len(roots)
        own = f"{roots[group].address}:{P2P_PORT}" if args.tiers else root_list
        env = node_env(host, origin, own, work, args.chunk)
        if args.tiers and host.role == "root":
            env["POLLEN_PARENT_ROOTS"] = root_list
        cache = args.root_cache if host.role == "root" and args.root_cache else args.cache
        if cache:
            env["POLLEN_CACHE_CAPACITY"] = cache
        if args.o_direct:
            env["POLLEN_CACHE_AIO_ENABLE"] = "1"
        if args.task_cpu:
            env.update(profiling.task_cpu_env(work / "task-cpu"))
        if args.keep_logs:
            env["POLLEN_LOG_AUDIT"] = "true"
            env["POLLEN_LOG_AUDIT_MODE"] = "file"
        start_node(host, env, work, verbose=args.verbose)
    for host in roots + agents:
        wait_http(host, f"http://127.0.0.1:{PROXY_PORT}/readyz")


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/swarm.py needs root (network namespaces, tc)", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP clean up like Ctrl-C: the finally below removes every namespace.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    tag = f"plb{os.getpid() % 100000}"
    work = Path(tempfile.mkdtemp(prefix="pollen-bench-swarm-"))
    net = Network(tag, args.queue_ms)
    try:
        sizes = [args.layer_mib] * args.layers
        if args.sizes_mib:
            sizes = [int(s) for s in args.sizes_mib.split(",")]
        image = build_image(work / "image", tuple(s * MiB for s in sizes), seed=7)
        net.create_hub()
        origin = net.add_host("origin", args.origin_mbit, args.origin_mbit)
        roots = [net.add_host("root", args.node_mbit, args.node_mbit) for _ in range(args.roots)]
        agents = [net.add_host("agent", args.node_mbit, args.node_mbit) for _ in range(args.nodes)]

        more = []
        if args.warm:
            warm = build_image(work / "warm", tuple(s * MiB for s in sizes), seed=8)
            more.append(("warm", warm))
        reg_log = start_origin(origin, work, image, *more)

        start_nodes(args, work, origin, roots, agents)
        if args.warm:
            warm_ref = f"127.0.0.1:{PROXY_PORT}/bench/image:warm"
            took = pull_all(agents, warm_ref, work, "warm", args.client, verbose=args.verbose)
            done = [x for x in took if not math.isnan(x)]
            print(
                f"warm-up: another image of the same sizes, {len(done)} of {len(took)} pulls "
                f"done in {max(done, default=math.nan):.1f}s"
            )
        results: dict[str, tuple[list[float], int, float, float]] = {}
        runs = [("swarm", f"127.0.0.1:{PROXY_PORT}/bench/image:v1")]
        if not args.skip_direct:
            runs.append(("direct", f"{origin.address}:5000/bench/image:v1"))
        for label, source in runs:
            results[label] = measure_run(args, work, image, label, source, reg_log, roots, agents)

        print_summary(args, image, sizes, roots, results)
    finally:
        net.close()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
            for log_dir in work.glob("log-*"):  # audit logs: one line per chunk moved
                shutil.copytree(log_dir, args.keep_logs / log_dir.name, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
