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
        "relayed",
        "asked",
        "share",
        "climbing",
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
        self.relayed = False  # its bytes are in; its end waits for its source's copy
        self.asked = math.nan  # when its receiver asked for it
        self.share = 0.0  # the rate its links give it; `rate` climbs to it (SwarmConfig.ramp)
        self.climbing = False  # a step of its climb to `share` is due

    def __hash__(self) -> int:
        """From what the flow carries, not its address: the engine keeps flows in sets, and
        an address-ordered set made the same simulation differ from run to run (P95 1.78-2.00
        x T_min for one setting). Two flows alike hash alike and stay two (equality is
        identity)."""
        return hash((self.src, self.dst, self.layer, self.chunk))

    def left(self, now: float) -> float:
        """Bytes still to come at `now`."""
        return self.remaining - self.rate * (now - self.t)


RAMP_STEPS = 4  # a climbing flow's rate changes this many times per time constant


def climbed(rate: float, share: float) -> float:
    """A flow's rate one step of its climb to `share` later: a RAMP_STEPS-th of the time
    constant closes 22 % of the gap (63 % in the whole); within 1 % it is there."""
    gap = (share - rate) * math.exp(-1 / RAMP_STEPS)
    return share if gap < 0.01 * share else share - gap


PHASES = 5  # a pull cut in this many equal parts: where its link stood unused
Pull = tuple[float, float, Iterable[tuple[float, float, float]]]


def phase_use(pulls: Iterable[Pull], start: float) -> tuple[float, ...]:
    """The share of its link's rate each pull used in each fifth of it, averaged over the
    pulls; each pull is (its end, its link's rate, its transfers as (first byte, last byte,
    amount)), all from `start`. A transfer's amount counts as spread evenly over its time, as
    much as the agents' traces on the cluster say (bench/transfers.py), so the two compare:
    where a pull loses its link, at the start (nothing to relay yet), in the middle or at the
    end."""
    used, count = [0.0] * PHASES, 0
    for end, rate, transfers in pulls:
        count += 1
        width = (end - start) / PHASES
        for begin, stop, amount in transfers if width > 0 else ():
            if stop <= begin:
                continue
            per_second = amount / (stop - begin) / (rate * width)
            for k in range(PHASES):
                lo, hi = max(begin, start + k * width), min(stop, start + (k + 1) * width)
                if hi > lo:
                    used[k] += per_second * (hi - lo)
    return tuple(u / max(count, 1) for u in used)


class Lanes:
    """The agents' transfers coming in, as they begin and stop: how long each agent had one
    coming in (`receiving`: its link's busy time), how long each of its downloads of one
    layer (a lane, keyed (node, layer)) stood with no transfer running between its first
    transfer and its last (`idle_share`), and what each moved when (`phases`). The netns
    cluster's agents trace all three (bench/transfers.py)."""

    def __init__(self, agents: int) -> None:
        self._agents = agents  # nodes [0, agents) are agents; the rest are roots
        self._node_running = [0] * agents
        self._node_since = [0.0] * agents
        self._receiving = [0.0] * agents
        self._running: dict[tuple[int, int], int] = {}
        self._span: dict[tuple[int, int], tuple[float, float]] = {}  # first start, last change
        self._empty_since: dict[tuple[int, int], float] = {}
        self._idle = 0.0
        self._moved: list[list[tuple[float, float, float]]] = [[] for _ in range(agents)]

    def moved(self, node: int, layer: int, now: float, step: int) -> None:
        """A transfer to `node` of `layer` began (`step` +1) or stopped (-1) at `now` (a root
        fetching as a node of another root's swarm counts not)."""
        if node >= self._agents:
            return
        running = self._node_running[node] + step
        self._node_running[node] = running
        if step > 0 and running == 1:
            self._node_since[node] = now
        elif running == 0:
            self._receiving[node] += now - self._node_since[node]
        lane = (node, layer)
        count = self._running.get(lane, 0) + step
        self._running[lane] = count
        self._span[lane] = (self._span.get(lane, (now, now))[0], now)
        if count == 0:
            self._empty_since[lane] = now
        elif step > 0 and count == 1 and lane in self._empty_since:
            self._idle += now - self._empty_since.pop(lane)

    def received(self, node: int, began: float, now: float, amount: float) -> None:
        """A transfer to `node` moved `amount` bytes from its first byte at `began` to `now`."""
        if node < self._agents and amount > 0:
            self._moved[node].append((began, now, amount))

    def phases(self, ends: Sequence[float | None], rates: Sequence[float]) -> tuple[float, ...]:
        """`phase_use` of the agents that finished (`ends`, None: not), from the first byte
        any agent received."""
        began = [b for moved in self._moved for b, _, _ in moved]
        pulls = [(end, rates[i], self._moved[i]) for i, end in enumerate(ends) if end is not None]
        return phase_use(pulls, min(began)) if began and pulls else (0.0,) * PHASES

    def receiving(self, node: int) -> float:
        """Seconds agent `node` had a transfer coming in."""
        return self._receiving[node]

    def idle_share(self) -> float:
        return self._idle / max(sum(b - a for a, b in self._span.values()), 1e-9)


def fair_rates(
    running: Iterable[Flow], up_cap: Sequence[float], down_cap: Sequence[float]
) -> dict[Flow, float]:
    """Max-min fair rates over every link (progressive filling): O(links x flows)."""
    cap: dict[tuple[int, int], float] = {}
    members: dict[tuple[int, int], list[Flow]] = {}
    flows = list(running)
    for f in flows:
        for link, c in (((0, f.src), up_cap[f.src]), ((1, f.dst), down_cap[f.dst])):
            if link not in cap:
                cap[link] = c
                members[link] = []
            members[link].append(f)
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
            cap[(0, f.src)] -= share
            cap[(1, f.dst)] -= share
    return rates


def spread_over_seconds(seconds: dict[int, float], began: float, ended: float, moved: int) -> None:
    """Add `moved` bytes, sent evenly over [began, ended], to the per-second totals."""
    span = max(ended - began, 1e-9)
    second = math.floor(began)
    while second < ended:
        part = min(ended, second + 1) - max(began, second)
        seconds[second] = seconds.get(second, 0.0) + moved * part / span
        second += 1
