"""Where the hops wait: every swarm transfer of a bench run, from the agents' debug logs.

    sudo .venv/bin/python bench/swarm.py --verbose --keep-logs DIR [...]
    .venv/bin/python bench/transfers.py DIR --node-mbit 100 [--chunk 4MiB]

With debug logging each agent logs every transfer it completes (`agent.swarm.download`: the
chunk, its source, when it began, when the response's head came, when 1 MiB was in, when it
said `finishing`, when all of it was in). This prints, against the time a chunk takes at the
link's rate: the transfers' durations (and their heads'), from the roots and from peers; how
much of the sources' upload time and of the receivers' download time was shared by two or
more transfers at once (each then runs at a fraction of the link: the schedule wants one per
link, but every layer's root schedules its own); the share of their rate the receivers'
links moved while busy, and in each fifth of the pull; how long a layer's download on a node
(its lane) stood empty between its transfers; the idle gaps between a receiver's transfers;
and how early `finishing` was said.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.sim.links import phase_use  # noqa: E402

LINE = re.compile(
    r"layer (?P<layer>\S+): chunk (?P<chunk>\d+)(?: \((?P<bytes>\d+) bytes\))? "
    r"from (?P<source>\S+) began at (?P<began>[\d.]+): "
    r"(?:head after (?P<head>-?\d+) ms, )?1 MiB in after (?P<first>-?\d+) ms, "
    r"`finishing` after (?P<said>-?\d+) ms, all in after (?P<took>\d+) ms"
)
UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


@dataclass(frozen=True)
class Transfer:
    node: str  # the receiver (its log's name)
    layer: str
    chunk: int
    source: str  # host:port
    began: float  # epoch seconds
    head: float  # seconds to the response's head (< 0: not logged, an older agent)
    first: float  # seconds to the first MiB (< 0: not heard)
    said: float  # seconds to `finishing` (< 0: not said)
    took: float  # seconds to the last byte
    part: float = 1.0  # its bytes over a whole chunk's (a layer's head chunks are smaller)

    @property
    def ended(self) -> float:
        return self.began + self.took


def parse(node: str, lines: Iterable[str], chunk: int | None = None) -> list[Transfer]:
    """The transfers one agent's log records (`chunk`: the whole chunk's bytes, which sizes
    the logged ones; an older agent's lines have no size and count whole)."""
    found = []
    for line in lines:
        m = LINE.search(line)
        if m is not None:
            found.append(
                Transfer(
                    node=node,
                    layer=m["layer"],
                    chunk=int(m["chunk"]),
                    source=m["source"],
                    began=float(m["began"]),
                    head=int(m["head"]) / 1000 if m["head"] is not None else -0.001,
                    first=int(m["first"]) / 1000,
                    said=int(m["said"]) / 1000,
                    took=int(m["took"]) / 1000,
                    part=int(m["bytes"]) / chunk if m["bytes"] and chunk else 1.0,
                )
            )
    return found


def shared(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(time with at least one interval open, time with two or more)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    busy = both = 0.0
    open_now, last = 0, 0.0
    for t, step in events:
        if open_now >= 1:
            busy += t - last
        if open_now >= 2:
            both += t - last
        open_now, last = open_now + step, t
    return busy, both


def gaps(intervals: list[tuple[float, float]]) -> list[float]:
    """The idle stretches between the first interval's start and the last one's end."""
    found, reach = [], None
    for a, b in sorted(intervals):
        if reach is not None and a > reach:
            found.append(a - reach)
        reach = b if reach is None else max(reach, b)
    return found


def lane_line(transfers: list[Transfer]) -> str:
    """How long each lane (one node's download of one layer) had no transfer with bytes to
    move between its first and its last: from a transfer's end to the next one's head
    (the wait for an assignment, the request's round trip); `pollen simulate` computes the
    same (`lane_idle`)."""
    lanes: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for t in transfers:
        lanes[(t.node, t.layer)].append((t.began + max(t.head, 0.0), t.ended))
    span = sum(max(b for _, b in v) - min(a for a, _ in v) for v in lanes.values())
    empty = sum(sum(gaps(v)) for v in lanes.values())
    return (
        f"a layer's download stood empty between its transfers {empty / max(span, 1e-9):.0%} "
        f"of its span ({empty:.1f} of {span:.1f} s; bench/swarm.py prints the simulator's)"
    )


def phase_line(full: list[Transfer], chunk_seconds: float) -> str:
    """How much of its link's rate each receiver used in each fifth of its pull (from the
    first head of the run to the node's own last byte), averaged over the receivers: where
    the pull loses time to the link, at the start (nothing to relay yet), in the middle
    (links shared) or at the end (the last chunks). `pollen simulate` computes the same
    (`agent.sim.links.phase_use`)."""
    start = min(t.began + max(t.head, 0.0) for t in full)
    by_node: dict[str, list[Transfer]] = defaultdict(list)
    for t in full:
        by_node[t.node].append(t)
    pulls = [
        (
            max(t.ended for t in mine),
            1 / chunk_seconds,
            [(t.began + max(t.head, 0.0), t.ended, t.part) for t in mine],
        )
        for mine in by_node.values()
    ]
    return "the receivers' links by fifth of each pull (their rate used): " + " ".join(
        f"{u:.0%}" for u in phase_use(pulls, start)
    )


def report(transfers: list[Transfer], chunk_seconds: float, roots: set[str]) -> list[str]:
    """The summary lines (see the module docstring)."""
    # Chunks that took a quarter of their link time or more (not a short last chunk's few bytes).
    full = [t for t in transfers if t.took >= t.part * chunk_seconds / 4]
    if not full:
        return ["no transfers of whole chunks in these logs (run the bench with --verbose)"]
    lines = [
        f"{len(full)} transfers; a chunk takes {1000 * chunk_seconds:.0f} ms at the link's rate"
    ]
    for kind in ("root", "peer"):
        some = [t for t in full if (t.source.rpartition(":")[0] in roots) == (kind == "root")]
        if some:
            took = statistics.median(t.took for t in some)
            ratio = statistics.median(t.took / (t.part * chunk_seconds) for t in some)
            heads = [t.head for t in some if t.head >= 0]
            head = f", the head after {1000 * statistics.median(heads):.0f}" if heads else ""
            lines.append(
                f"  from a {kind}: {len(some)}, median {1000 * took:.0f} ms{head} "
                f"({ratio:.2f} x the link's time for its bytes)"
            )
    by_source: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_node: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in full:
        by_source[t.source].append((t.began, t.ended))
        by_node[t.node].append((t.began, t.ended))
    up = [shared(v) for v in by_source.values()]
    down = [shared(v) for v in by_node.values()]
    up_busy, up_both = sum(b for b, _ in up), sum(s for _, s in up)
    down_busy, down_both = sum(b for b, _ in down), sum(s for _, s in down)
    lines.append(
        f"sources uploading {up_busy:.1f} s in all, two or more at once "
        f"{up_both / max(up_busy, 1e-9):.0%} of it; receivers downloading {down_busy:.1f} s, "
        f"two or more at once {down_both / max(down_busy, 1e-9):.0%}"
    )
    moved = sum(t.part for t in full) * chunk_seconds / max(down_busy, 1e-9)
    lines.append(
        f"while a transfer was in, the receivers' links moved {moved:.0%} of their rate "
        "(bench/swarm.py prints the simulator's beside its P95: 96-99 % on the reference "
        "settings; where TCP shares a link worse, it shows here)"
    )
    lines.append(phase_line(full, chunk_seconds))
    lines.append(lane_line(full))
    idle = [g for v in by_node.values() for g in gaps(v)]
    if idle:
        lines.append(
            f"idle gaps between a receiver's transfers: {len(idle)}, {sum(idle):.1f} s in all, "
            f"median {1000 * statistics.median(idle):.0f} ms"
        )
    leads = sorted(t.took - t.said for t in full if t.said >= 0)
    if leads:
        lines.append(
            f"`finishing` said {len(leads)} times, before the last byte by a median "
            f"{1000 * statistics.median(leads):.0f} ms (10th percentile "
            f"{1000 * leads[len(leads) // 10]:.0f}, 90th {1000 * leads[9 * len(leads) // 10]:.0f})"
        )
    return lines


def parse_size(text: str) -> int:
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, help="a bench run's --keep-logs directory")
    parser.add_argument("--node-mbit", type=float, required=True)
    parser.add_argument("--chunk", default="4MiB")
    parser.add_argument("--roots", default="198.18.0.2,198.18.0.3", help="the roots' addresses")
    args = parser.parse_args()
    transfers = []
    for log in sorted(args.logs.glob("agent-*.log")):
        with log.open(errors="replace") as lines:
            transfers += parse(log.stem, lines, parse_size(args.chunk))
    seconds = parse_size(args.chunk) * 8 / (args.node_mbit * 1e6)
    print("\n".join(report(transfers, seconds, set(args.roots.split(",")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
