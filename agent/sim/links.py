"""Transfers on modelled links: a flow's state, max-min fair rates, and the origin's rate
over time. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


class Flow:
    """One chunk on its way from `src` to `dst` (node indexes), at `rate` since `t`."""

    __slots__ = (
        "src",
        "dst",
        "layer",
        "chunk",
        "size",
        "remaining",
        "rate",
        "t",
        "version",
        "running",
        "began",
        "tailed",
        "due",
        "tail_due",
        "tail_version",
    )

    def __init__(self, src: int, dst: int, layer: int, chunk: int, size: int) -> None:
        self.src = src
        self.dst = dst
        self.layer = layer
        self.chunk = chunk
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.t = 0.0
        self.version = 0
        self.running = False
        self.began = math.nan  # time of the first byte
        self.tailed = False  # its planner was told it is finishing
        # The end and the tail as last scheduled (events are not moved when a flow slows:
        # the event finds it not done yet and comes again), and the tail event's version.
        self.due = math.inf
        self.tail_due = math.inf
        self.tail_version = 0

    def left(self, now: float) -> float:
        """Bytes still to come at `now`."""
        return self.remaining - self.rate * (now - self.t)


POOL = (2, 0)  # the shared receive capacity, as a link every pooled flow crosses


def fair_rates(
    running: Iterable[Flow],
    up_cap: Sequence[float],
    down_cap: Sequence[float],
    *,
    pool: float | None = None,
    pooled: int = 0,
) -> dict[Flow, float]:
    """Max-min fair rates over every link (progressive filling): O(links x flows). With
    `pool`, flows to nodes below `pooled` also share that many bytes/s in all (the nodes'
    CPU on one machine's cores)."""
    cap: dict[tuple[int, int], float] = {}
    members: dict[tuple[int, int], list[Flow]] = {}
    paths: dict[Flow, list[tuple[int, int]]] = {}
    flows = list(running)
    for f in flows:
        path = [((0, f.src), up_cap[f.src]), ((1, f.dst), down_cap[f.dst])]
        if pool is not None and f.dst < pooled:
            path.append((POOL, pool))
        for link, c in path:
            if link not in cap:
                cap[link] = c
                members[link] = []
            members[link].append(f)
        paths[f] = [link for link, _ in path]
    rates: dict[Flow, float] = {}
    while len(rates) < len(flows):
        share, link = min(
            (cap[k] / n, k)
            for k, fl in members.items()
            if (n := sum(1 for f in fl if f not in rates))
        )
        for f in members[link]:
            if f in rates:
                continue
            rates[f] = share
            for crossed in paths[f]:
                cap[crossed] -= share
    return rates


def spread_over_seconds(seconds: dict[int, float], began: float, ended: float, moved: int) -> None:
    """Add `moved` bytes, sent evenly over [began, ended], to the per-second totals."""
    span = max(ended - began, 1e-9)
    second = math.floor(began)
    while second < ended:
        part = min(ended, second + 1) - max(began, second)
        seconds[second] = seconds.get(second, 0.0) + moved * part / span
        second += 1
