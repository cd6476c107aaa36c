"""A discrete-event simulator of one layer's swarm, driving `agent.swarm.schedule.LayerSchedule`.

It is the schedule's proving ground (tests/test_swarm.py) and meant to be imported by bigger
benchmarks (`bench/`, 1000+ nodes): nothing here depends on pytest. Run it as a script to print
the two reference settings of issue 4.

Model
-----
- An origin sends the layer to the root in order at `origin` bytes/s; the root reports each
  chunk as it lands (`origin_progress`). The root uploads at `root_upload` bytes/s.
- N agents, node i named ``n<i>``, each with upload `upload` and download `download` bytes/s
  (per-node overrides allowed). An agent joins (`request` with an empty `have`) at
  ``i * start_spread / N``, and asks again whenever one of its transfers ends, for ``want -
  in flight``; an agent with free slots asks again every `poll` seconds anyway (the plan
  long-poll). A transfer starts about
  `latency` seconds after it is assigned (plan answer, connect, request; `jitter` spreads it
  uniformly over [latency/2, 3·latency/2] so simultaneous events do not always run in the same
  order). The tracker's `expire` runs every `tick` seconds.
- Links (default): a node's concurrent uploads share its upload rate equally, its concurrent
  downloads share its download rate equally, and a transfer runs at the smaller of its two
  shares. Max-min fair sharing, which TCP over shaped links approaches, gives every transfer
  at least that much at every instant, so this model errs on the slow side; and it is local:
  a transfer starting or ending changes only the rates at its two ends, so an event costs
  O(slots) and 1000 nodes run in seconds. `fair_sharing=True` computes max-min fair rates over
  every link instead (progressive filling, O(transfers · links) per event: small swarms only).
- Faults: `liars` serve bytes that fail verification (the receiver reports bad data when the
  transfer ends); `leaves` maps a node to the time it disappears (it stops counting).

`simulate(SwarmConfig(...))` returns a `SwarmResult`: each node's completion time, the bytes
the root and every node uploaded, all bytes moved, and T_min = max(F/u_origin, F/d,
N·F/(u_origin + Σu)), counting the root's upload in Σu (issue 4's floor; with per-node rates, d
is the slowest download and Σu the sum of the actual uploads).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.swarm.schedule import Actions, Assignment, LayerSchedule

MiB = 1 << 20
Mbit = 1_000_000 / 8  # bytes per second in one Mbit/s

ROOT_NAME = "root"

# Event kinds, in the order they are handled at equal times.
_ORIGIN, _DONE, _START, _JOIN, _LEAVE, _POLL, _EXPIRE = range(7)


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    nodes: int
    file_size: int  # bytes
    chunk_size: int  # bytes
    upload: float  # bytes/s, each node
    download: float  # bytes/s, each node
    origin: float  # bytes/s, origin -> root
    root_upload: float | None = None  # bytes/s; default: `upload`
    want: int = 2  # transfers an agent asks for: one, and a spare for a second source
    window: int = 8
    upload_slots: int = 1
    root_upload_slots: int = 1
    endgame: int = 2
    transfer_timeout: float = 10.0
    latency: float = 0.001  # s from assignment to first byte
    poll: float = 2.0  # s between asks of an idle agent
    tick: float = 0.5  # s between the tracker's `expire` calls
    start_spread: float = 0.0  # node i joins at i * start_spread / nodes
    node_upload: Mapping[int, float] = field(default_factory=dict)  # per-node overrides
    node_download: Mapping[int, float] = field(default_factory=dict)
    liars: frozenset[int] = frozenset()
    leaves: Mapping[int, float] = field(default_factory=dict)  # node -> time it leaves
    time_limit: float | None = None  # s; default 50 x T_min
    jitter: bool = True  # each latency is uniform in [latency/2, 3*latency/2] (breaks ties)
    seed: int = 0
    fair_sharing: bool = False  # max-min fair rates over all links (O(flows^2) per event)

    @property
    def chunk_count(self) -> int:
        return (self.file_size + self.chunk_size - 1) // self.chunk_size

    def chunk_bytes(self, chunk: int) -> int:
        return min(self.chunk_size, self.file_size - chunk * self.chunk_size)

    def upload_of(self, node: int) -> float:
        return self.node_upload.get(node, self.upload)

    def download_of(self, node: int) -> float:
        return self.node_download.get(node, self.download)

    @property
    def root_rate(self) -> float:
        return self.upload if self.root_upload is None else self.root_upload

    @property
    def t_min(self) -> float:
        return t_min(
            file_size=self.file_size,
            origin=self.origin,
            downloads=[self.download_of(i) for i in range(self.nodes)],
            uploads=[self.upload_of(i) for i in range(self.nodes)] + [self.root_rate],
        )


def t_min(*, file_size: int, origin: float, downloads: list[float], uploads: list[float]) -> float:
    """The Kumar-Ross floor max(F/u_o, F/d, N·F/(u_o + Σu)) for nodes with these download
    rates, and these upload rates (the nodes' and the roots')."""
    f, n = file_size, len(downloads)
    return max(f / origin, f / min(downloads), n * f / (origin + sum(uploads)))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q·n)): P95 of 16 nodes is the max."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, kw_only=True)
class SwarmResult:
    config: SwarmConfig
    completion: dict[str, float]  # node -> when it held every chunk (absent: left before that)
    t_min: float
    root_upload_bytes: int
    total_bytes: int  # every byte moved between nodes (root included), aborted parts too
    uploaded: dict[str, int]  # bytes each node (and the root) uploaded
    downloaded: dict[str, int]
    transfers: int
    cancelled: int
    events: int

    @property
    def p50(self) -> float:
        return percentile(list(self.completion.values()), 0.50)

    @property
    def p95(self) -> float:
        return percentile(list(self.completion.values()), 0.95)

    @property
    def slowest(self) -> float:
        return max(self.completion.values())

    @property
    def p95_ratio(self) -> float:
        return self.p95 / self.t_min

    @property
    def root_ratio(self) -> float:
        return self.root_upload_bytes / self.config.file_size

    def summary(self) -> str:
        return (
            f"N={self.config.nodes} F={self.config.file_size / MiB:.0f}MiB "
            f"chunks={self.config.chunk_count} T_min={self.t_min:.2f}s "
            f"P50={self.p50:.2f}s P95={self.p95:.2f}s max={self.slowest:.2f}s "
            f"P95/T_min={self.p95_ratio:.3f} root/F={self.root_ratio:.3f} "
            f"total/(N*F)={self.total_bytes / (self.config.nodes * self.config.file_size):.3f} "
            f"transfers={self.transfers} cancelled={self.cancelled} events={self.events}"
        )


class _Flow:
    __slots__ = (
        "src",
        "dst",
        "chunk",
        "size",
        "remaining",
        "rate",
        "t",
        "version",
        "running",
        "began",
    )

    def __init__(self, src: int, dst: int, chunk: int, size: int) -> None:
        self.src = src
        self.dst = dst
        self.chunk = chunk
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.t = 0.0
        self.version = 0
        self.running = False
        self.began = math.nan  # time of the first byte


class Simulation:
    """One run. `run()` returns the result; the object can be inspected afterwards."""

    def __init__(self, config: SwarmConfig) -> None:
        self.config = c = config
        n = c.nodes
        self.root = n  # index of the root in the per-node arrays
        self.names = [f"n{i}" for i in range(n)] + [ROOT_NAME]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.up_cap = [c.upload_of(i) for i in range(n)] + [c.root_rate]
        self.down_cap = [c.download_of(i) for i in range(n)] + [math.inf]
        self.ups: list[set[_Flow]] = [set() for _ in range(n + 1)]
        self.downs: list[set[_Flow]] = [set() for _ in range(n + 1)]
        self.flows: dict[tuple[int, int, int], _Flow] = {}  # (dst, chunk, src)
        self.inflight = [0] * n
        self.held = [bytearray(c.chunk_count) for _ in range(n)]
        self.have = [0] * n
        self.alive = [False] * n
        self.gone = [False] * n
        self.poll_pending = [False] * n
        self.completion: dict[str, float] = {}
        self.uploaded = [0] * (n + 1)
        self.downloaded = [0] * n
        self.transfers = 0
        self.cancelled = 0
        self.events = 0
        self.heap: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.ask: set[int] = set()  # agents that will ask for work before time moves on
        self.running: set[_Flow] = set()
        self.origin_chunks = 0  # chunks the root holds
        self.sending = [0] * (n + 1)  # transfers assigned to each source and not ended
        self.banned: set[int] = set()  # sources reported for bad data
        self.rng = random.Random(c.seed)
        self.unfinished = n
        self.schedule = LayerSchedule(
            chunk_count=c.chunk_count,
            root=ROOT_NAME,
            window=c.window,
            upload_slots=c.upload_slots,
            root_upload_slots=c.root_upload_slots,
            transfer_timeout=c.transfer_timeout,
            endgame=c.endgame,
        )

    def push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, obj, version))

    def run(self) -> SwarmResult:
        c = self.config
        landed = 0
        for k in range(c.chunk_count):
            landed += c.chunk_bytes(k)
            self.push(landed / c.origin, _ORIGIN, k + 1)
        for i in range(c.nodes):
            self.push(i * c.start_spread / c.nodes, _JOIN, i)
        for i, t in c.leaves.items():
            self.push(t, _LEAVE, i)
        self.push(c.tick, _EXPIRE)
        limit = c.time_limit if c.time_limit is not None else 50 * c.t_min
        while self.heap:
            now, kind, _, obj, version = heapq.heappop(self.heap)
            if now > limit:
                raise RuntimeError(f"simulation passed {limit:.1f}s: {self.stuck()}")
            self.events += 1
            if kind == _DONE:
                flow = obj
                assert isinstance(flow, _Flow)
                if flow.running and flow.version == version:
                    self.finish(flow, now)
            elif kind == _START:
                self.start(obj, now)
            elif kind == _ORIGIN:
                self.origin_chunks = obj
                self.apply(self.schedule.origin_progress(obj, now), now)
            elif kind == _JOIN:
                self.alive[obj] = True
                ask = self.schedule.request(self.names[obj], have=(), want=c.want, now=now)
                self.apply(ask, now)
            elif kind == _LEAVE:
                self.alive[obj] = False
                self.gone[obj] = True
                if self.have[obj] < c.chunk_count:
                    self.unfinished -= 1
                self.apply(self.schedule.leave(self.names[obj], now), now)
            elif kind == _POLL:
                self.poll_pending[obj] = False
                self.ask.add(obj)
            elif kind == _EXPIRE:
                if self.flows:
                    self.apply(self.schedule.expire(now), now)
                self.push(now + c.tick, _EXPIRE)
            self.drain(now)
            if self.unfinished == 0:
                break
        return SwarmResult(
            config=c,
            completion=dict(self.completion),
            t_min=c.t_min,
            root_upload_bytes=self.uploaded[self.root],
            total_bytes=sum(self.uploaded),
            uploaded={self.names[i]: b for i, b in enumerate(self.uploaded)},
            downloaded={self.names[i]: b for i, b in enumerate(self.downloaded)},
            transfers=self.transfers,
            cancelled=self.cancelled,
            events=self.events,
        )

    def stuck(self) -> str:
        missing = {
            self.names[i]: self.config.chunk_count - self.have[i]
            for i in range(self.config.nodes)
            if not self.gone[i] and self.have[i] < self.config.chunk_count
        }
        return f"nodes still missing chunks: {missing}"

    # Agents ------------------------------------------------------------------------------

    def drain(self, now: float) -> None:
        """Agents whose transfers ended ask for more (lowest index first: deterministic)."""
        c = self.config
        while self.ask:
            i = min(self.ask)
            self.ask.discard(i)
            if not self.alive[i] or self.have[i] == c.chunk_count:
                continue
            free = c.want - self.inflight[i]
            self.apply(self.schedule.request(self.names[i], want=free, now=now), now)
            if self.inflight[i] < c.want and not self.poll_pending[i]:
                self.poll_pending[i] = True
                self.push(now + c.poll, _POLL, i)

    def apply(self, actions: Actions, now: float) -> None:
        """Carry out the schedule's decisions, checking each against the simulated truth."""
        index = self.index
        for a in actions.cancelled:
            flow = self.flows.pop((index[a.node], a.chunk, index[a.source]), None)
            if flow is not None:
                self.cancelled += 1
                self.stop(flow, now)
                self.ended(flow)
        for a in actions.assigned:
            dst, src = index[a.node], index[a.source]
            self.check(a, dst, src)
            self.sending[src] += 1
            flow = _Flow(src, dst, a.chunk, self.config.chunk_bytes(a.chunk))
            self.flows[(dst, a.chunk, src)] = flow
            self.inflight[dst] += 1
            self.transfers += 1
            delay = self.config.latency
            if self.config.jitter:
                delay *= 0.5 + self.rng.random()
            self.push(now + delay, _START, flow)

    def check(self, a: Assignment, dst: int, src: int) -> None:
        """The schedule's promises, against what the simulation knows (AssertionError)."""
        c = self.config
        chunk = a.chunk
        assert self.alive[dst] and not self.gone[dst], f"{a}: to a node that is not there"
        assert not self.held[dst][chunk], f"{a}: the node holds that chunk"
        if src == self.root:
            assert chunk < self.origin_chunks, f"{a}: the root does not have it yet"
            assert self.sending[src] < c.root_upload_slots, f"{a}: root slots exceeded"
        else:
            assert self.alive[src] and not self.gone[src], f"{a}: from a node that is not there"
            assert self.held[src][chunk], f"{a}: the source does not hold it"
            assert src not in self.banned, f"{a}: from a banned source"
            assert self.sending[src] < c.upload_slots, f"{a}: upload slots exceeded"

    def ended(self, flow: _Flow) -> None:
        self.inflight[flow.dst] -= 1
        self.sending[flow.src] -= 1
        self.ask.add(flow.dst)

    # Links -------------------------------------------------------------------------------

    def start(self, flow: _Flow, now: float) -> None:
        if self.flows.get((flow.dst, flow.chunk, flow.src)) is not flow:
            return  # cancelled before its first byte
        flow.running = True
        flow.t = flow.began = now
        self.ups[flow.src].add(flow)
        self.downs[flow.dst].add(flow)
        self.running.add(flow)
        if self.config.fair_sharing:
            self.rebalance(now)
        else:
            self.retime(self.ups[flow.src], now)
            self.retime(self.downs[flow.dst], now)

    def stop(self, flow: _Flow, now: float) -> None:
        """Take a flow off its links and count the bytes it moved."""
        if flow.running:
            flow.remaining = max(0.0, flow.remaining - flow.rate * (now - flow.t))
            flow.running = False
            self.ups[flow.src].discard(flow)
            self.downs[flow.dst].discard(flow)
            self.running.discard(flow)
            if self.config.fair_sharing:
                self.rebalance(now)
            else:
                self.retime(self.ups[flow.src], now)
                self.retime(self.downs[flow.dst], now)
        moved = flow.size - round(flow.remaining)
        self.uploaded[flow.src] += moved
        self.downloaded[flow.dst] += moved

    def retime(self, flows: set[_Flow], now: float) -> None:
        """Equal shares at both ends, the smaller one wins (the default, local model)."""
        ups, downs, up_cap, down_cap = self.ups, self.downs, self.up_cap, self.down_cap
        for f in flows:
            self.set_rate(
                f, min(up_cap[f.src] / len(ups[f.src]), down_cap[f.dst] / len(downs[f.dst])), now
            )

    def set_rate(self, f: _Flow, rate: float, now: float) -> None:
        if rate == f.rate:
            return
        f.remaining = max(0.0, f.remaining - f.rate * (now - f.t))
        f.t = now
        f.rate = rate
        f.version += 1
        self.push(now + f.remaining / rate, _DONE, f, f.version)

    def rebalance(self, now: float) -> None:
        """Max-min fair rates over every link (progressive filling): O(links x flows)."""
        cap: dict[tuple[int, int], float] = {}
        members: dict[tuple[int, int], list[_Flow]] = {}
        for f in self.running:
            for link, c in (((0, f.src), self.up_cap[f.src]), ((1, f.dst), self.down_cap[f.dst])):
                if link not in cap:
                    cap[link] = c
                    members[link] = []
                members[link].append(f)
        rates: dict[_Flow, float] = {}
        while len(rates) < len(self.running):
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
        for f, rate in rates.items():
            self.set_rate(f, max(rate, 1e-9), now)

    def finish(self, flow: _Flow, now: float) -> None:
        del self.flows[(flow.dst, flow.chunk, flow.src)]
        flow.remaining = 0.0
        self.stop(flow, now)
        self.ended(flow)
        dst, chunk = flow.dst, flow.chunk
        name, source = self.names[dst], self.names[flow.src]
        if flow.src in self.config.liars:
            self.banned.add(flow.src)
            self.apply(self.schedule.failed(name, chunk, source, bad_data=True, now=now), now)
            return
        if not self.held[dst][chunk]:
            self.held[dst][chunk] = 1
            self.have[dst] += 1
            if self.have[dst] == self.config.chunk_count:
                self.completion[name] = now
                self.unfinished -= 1
        self.apply(self.schedule.completed(name, chunk, source, now), now)


def simulate(config: SwarmConfig) -> SwarmResult:
    return Simulation(config).run()


def reference_case(
    nodes: int = 16, link_mbit: float = 100, origin_mbit: float = 200, **overrides: object
) -> SwarmConfig:
    """Issue 4's benchmark setting: 128 MiB (2 x 64 MiB as one file) in 4 MiB chunks, every
    node (and the root) with `link_mbit` up and down, the origin at `origin_mbit`."""
    base: dict[str, object] = {
        "nodes": nodes,
        "file_size": 128 * MiB,
        "chunk_size": 4 * MiB,
        "upload": link_mbit * Mbit,
        "download": link_mbit * Mbit,
        "origin": origin_mbit * Mbit,
    }
    base.update(overrides)
    return SwarmConfig(**base)  # type: ignore[arg-type]


if __name__ == "__main__":
    import sys
    import time

    for cfg in (reference_case(16, 100, 200), reference_case(8, 200, 400)):
        t0 = time.process_time()
        res = simulate(cfg)
        print(res.summary(), f"cpu={time.process_time() - t0:.2f}s", file=sys.stdout)
