"""`pollen simulate`: how long would N nodes take to pull this image through the swarm, and how
much would the origin send? Flags in, a SwarmConfig to the engine, a report out."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TextIO

from agent.sim import reference
from agent.sim.engine import Progress, simulate
from agent.sim.model import (
    ROOT_REQUEST_S,
    Gbit,
    SwarmConfig,
    SwarmResult,
    parse_image,
    parse_size,
)
from agent.swarm.protocol import MAX_DEPTH

DEFAULTS: dict[str, Any] = {
    "nodes": 100,
    "image": "8x512MiB",
    "node_gbit": 10.0,
    "origin_gbit": 10.0,
    "roots": 1,
    "chunk": "4MiB",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "simulate",
        help="simulate a pull by N nodes on the real scheduling code (P95, origin traffic)",
        description="A discrete-event simulation of N agents pulling one image through the "
        "swarm: the real root schedule and agent planner over modelled links, disks, CPUs and "
        "roots. Sizes take KiB/MiB/GiB (binary) or KB/MB/GB (decimal).",
    )
    parser.add_argument("--nodes", type=int, default=DEFAULTS["nodes"], help="agents (100)")
    parser.add_argument(
        "--image",
        default=DEFAULTS["image"],
        help="layers as a comma list of COUNTxSIZE, e.g. 8x512MiB or 5x4GiB,2x10GiB",
    )
    parser.add_argument("--node-gbit", type=float, default=DEFAULTS["node_gbit"])
    parser.add_argument("--origin-gbit", type=float, default=DEFAULTS["origin_gbit"])
    parser.add_argument(
        "--roots", type=int, default=DEFAULTS["roots"], help="roots (layers spread by rendezvous)"
    )
    parser.add_argument("--cache", default=None, help="each agent's cache, e.g. 4GiB (whole)")
    parser.add_argument("--disk-mbps", type=float, default=None, help="a node's disk writes")
    parser.add_argument(
        "--agent-cpu-s-per-gib",
        type=float,
        default=None,
        help="an agent's CPU per GiB received; with one core it caps the node's rate",
    )
    parser.add_argument(
        "--root-request-ms",
        type=float,
        default=ROOT_REQUEST_S * 1000,
        help="a root's CPU per plan request (requests queue at its one core); "
        f"{ROOT_REQUEST_S * 1000:g} as bench/rootload.py measured",
    )
    parser.add_argument(
        "--layers-at-once",
        type=int,
        default=reference.LAYERS_AT_ONCE,
        help="layers an agent pulls at once (containerd: 3; 0: all)",
    )
    parser.add_argument("--chunk", default=DEFAULTS["chunk"], help="chunk size (cache.chunkSize)")
    add_timing_arguments(parser)
    parser.add_argument(
        "--stripe-chunks",
        type=int,
        default=None,
        help="a design under study: each layer's chunks in stripes of this many, each on its "
        "own root (rendezvous); today one root schedules a whole layer",
    )
    parser.add_argument(
        "--head-chunk",
        type=parse_size,
        default=0,
        help="the size of each layer's first 8 chunks (default: the agents' rule, half a "
        "--chunk, a quarter for a layer of at most two; the start of a pull is a chunk time "
        "per hop)",
    )
    parser.add_argument(
        "--uniform-chunks",
        action="store_true",
        help="cut layers into --chunk chunks only, no smaller head (as agents did before)",
    )
    parser.add_argument(
        "--handoffs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a root fetching one big layer hands the next to the next root, as roots do "
        "(on); --no-handoffs: every layer on the first root of its rendezvous order",
    )
    parser.add_argument(
        "--tiers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="roots in tiers (parentRoots): node i's group root is root i mod K, and each root "
        "fetches a layer another root owns through that root's swarm (off; on with --reference)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object (a list with -r)")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the original's seven published rows (1000 nodes) beside the simulation",
    )
    parser.add_argument(
        "--rows",
        type=row_numbers,
        default=list(range(1, len(reference.PUBLISHED) + 1)),
        help="with --reference: which rows, e.g. 1 or 1,3 (all)",
    )


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """How the modelled agents and links behave in time: round trips, the store after a
    chunk's last byte, transfers in flight, and TCP's climb to a larger share."""
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=10.0,
        help="a plan request's and a chunk request's round trip, software included (10: as "
        "traced on the netns cluster)",
    )
    parser.add_argument(
        "--store-ms",
        type=float,
        default=15.0,
        help="from a chunk's last byte to its report (hash, disk write; 15: as traced)",
    )
    parser.add_argument(
        "--max-depth",
        type=int,
        default=MAX_DEPTH,
        help=f"transfers a node keeps in flight at most (1: one at a time; {MAX_DEPTH})",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="TCP's climb to a larger share, in chunk times at the node's link (0: fluid links, "
        "every share taken at once; 0.3 reproduces the netns cluster's 100 ms queues)",
    )


def row_numbers(text: str) -> list[int]:
    try:
        rows = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows are numbers like 1,3: {text!r}") from None
    if not rows or not all(1 <= n <= len(reference.PUBLISHED) for n in rows):
        raise argparse.ArgumentTypeError(f"rows are 1..{len(reference.PUBLISHED)}")
    return rows


def build_config(args: argparse.Namespace, image: str | None = None) -> SwarmConfig:
    """The flags as a simulation; raises ValueError naming a bad flag."""
    chunk = parse_size(args.chunk)
    layers = parse_image(image or args.image)
    cache_chunks = None
    if args.cache is not None:
        at_once = args.layers_at_once or len(layers)
        # A layer that fits its share of the cache is kept whole; a bigger one passes through.
        cache_chunks = max(1, parse_size(args.cache) // chunk // min(at_once, len(layers)))
    if args.nodes < 1 or args.roots < 1:
        raise ValueError("--nodes and --roots must be >= 1")
    link = args.node_gbit * Gbit
    return SwarmConfig(
        nodes=args.nodes,
        layers=layers,
        chunk_size=chunk,
        upload=link,
        download=link,
        origin=args.origin_gbit * Gbit,
        roots=args.roots,
        disk=args.disk_mbps * 1e6 if args.disk_mbps else None,
        agent_cpu_s_per_gib=args.agent_cpu_s_per_gib,
        root_request_s=args.root_request_ms / 1000,
        layers_at_once=args.layers_at_once or None,
        stripe_chunks=args.stripe_chunks,
        head_chunk=chunk if args.uniform_chunks else args.head_chunk,
        tiers=bool(args.tiers),
        handoffs=args.handoffs,
        latency=args.rtt_ms / 1000,
        store_delay=args.store_ms / 1000,
        seed=args.seed,
        max_depth=args.max_depth,
        ramp=args.ramp,
        node_cache_chunks=cache_chunks,
        time_limit=24 * 3600.0,
    )


def progress_bar(stream: TextIO, label: str) -> Progress | None:
    """A one-line bar on a terminal (nothing when stderr is a file or a pipe)."""
    if not stream.isatty():
        return None

    def show(now: float, done: float) -> None:
        filled = int(done * 30)
        bar = "#" * filled + "." * (30 - filled)
        stream.write(f"\r{label} [{bar}] {done:6.1%} of the chunks, {now:8.1f} s simulated")
        stream.flush()

    return show


def run_one(config: SwarmConfig, label: str) -> tuple[SwarmResult, float]:
    started = time.process_time()
    result = simulate(config, progress_bar(sys.stderr, label))
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 100 + "\r")
    return result, time.process_time() - started


def describe(result: SwarmResult, wall_s: float) -> str:
    c = result.config
    cpu = result.root_cpu_s(c.root_request_s)
    busiest = max(cpu.values(), default=0.0)
    return (
        f"{c.nodes} nodes, {len(c.layer_sizes)} layers, {c.total_size / 2**30:.2f} GiB, "
        f"{c.roots} root(s)\n"
        f"  P50 {result.p50:.2f} s  P95 {result.p95:.2f} s  max {result.slowest:.2f} s  "
        f"T_min {result.t_min:.2f} s  P95/T_min {result.p95_ratio:.2f}\n"
        f"  origin sent {result.origin_over_f:.3f} x F, peak {result.origin_peak / Gbit:.2f} "
        f"Gbit/s; roots answered {sum(result.requests.values())} plan requests, the busiest "
        f"{busiest:.1f} CPU-s ({busiest / max(result.p95, 1e-9):.0%} of one core until P95)\n"
        f"  the agents' links moved {result.link_use:.0%} of their rate while receiving; by "
        f"fifth of each pull {' '.join(f'{u:.0%}' for u in result.phase_use)}\n"
        f"  simulated in {wall_s:.1f} CPU-s ({result.events} events)"
    )


def reference_row(args: argparse.Namespace, index: int) -> dict[str, Any]:
    """One published row, simulated (a worker process runs it)."""
    row = reference.PUBLISHED[index]
    config = build_config(args, row.image)
    started = time.process_time()
    result = simulate(config)
    wall = time.process_time() - started
    data = result.to_json(wall_s=wall, request_s=config.root_request_s)
    data.update(
        row=index + 1,
        label=row.label,
        image=row.image,
        published_p95_s=row.p95_s,
        published_origin_peak_gbit=row.origin_peak_gbit,
        unpack_s=round(row.unpack_s(config.layer_sizes), 1),
        p95_over_published=round(result.p95 / row.p95_s, 3),
    )
    return data


def row_line(data: dict[str, Any]) -> str:
    return (
        f"{data['row']}. {data['label']:18s} P95 {data['p95_s']:7.1f} s "
        f"(+ unpack <= {data['unpack_s']:5.1f} s) vs published {data['published_p95_s']:4.0f} s: "
        f"{data['p95_over_published']:5.2f}x  T_min {data['t_min_s']:6.1f} s  origin "
        f"{data['origin_over_f']:5.3f} x F, peak {data['origin_peak_gbit']:5.2f} vs "
        f"{data['published_origin_peak_gbit']:3.1f} Gbit/s  busiest root "
        f"{data['root_cpu_s_max']:6.0f} CPU-s  [{data['wall_s']:.0f} CPU-s]"
    )


def run_reference(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows asked for, one process per core; each printed as soon as it and the rows
    before it are done."""
    indexes = [n - 1 for n in args.rows]
    rows = []
    with ProcessPoolExecutor(max_workers=min(len(indexes), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(reference_row, args, i) for i in indexes]
        for future in futures:
            data = future.result()
            rows.append(data)
            if not args.json:
                print(row_line(data), flush=True)
    return rows


def reference_defaults(args: argparse.Namespace) -> None:
    """The published setting, for the flags the user left at their defaults."""
    for key, value in reference.SETTING.items():
        if getattr(args, key) in (DEFAULTS.get(key), None):
            setattr(args, key, value)


def main(args: argparse.Namespace) -> int:
    try:
        if args.reference:
            reference_defaults(args)
            build_config(args, reference.PUBLISHED[0].image)  # flags checked before hours
            if not args.json:
                print(reference.header(args))
            rows = run_reference(args)
            if args.json:
                print(json.dumps(rows, indent=1))
            return 0
        config = build_config(args)
    except ValueError as exc:
        print(f"pollen simulate: {exc}", file=sys.stderr)
        return 2
    result, wall = run_one(config, "simulating")
    if args.json:
        print(json.dumps(result.to_json(wall_s=wall, request_s=config.root_request_s)))
    else:
        print(describe(result, wall))
    return 0
