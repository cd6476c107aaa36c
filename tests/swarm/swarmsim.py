"""A discrete-event simulator of one layer's swarm: the real root schedule
(`agent.swarm.schedule.LayerSchedule`) and a real agent planner
(`agent.swarm.planner.LayerPlanner`) per node, over modelled links.

It is the proving ground of both (tests/swarm/test_schedule.py) and meant to be imported by
bigger benchmarks (`bench/`, 1000+ nodes): nothing here depends on pytest. Run it as a script to
print the two reference settings of the swarm benchmark.

Model
-----
- An origin sends the layer to the root in order at `origin` bytes/s; the root reports each
  chunk as it lands (`origin_progress`). The root uploads at `root_upload` bytes/s.
- N agents, node i named ``n<i>``, each with upload `upload` and download `download` bytes/s
  (per-node overrides allowed), each a `LayerPlanner` with `want` transfer slots. Node i starts
  at ``i * start_spread / N``. Its plan requests reach the root ``latency / 2`` later, where a
  model of the tracker applies the reports, states the demand to the schedule, and answers with
  the node's mailbox of assignments (a standing request with nothing to deliver is held up to
  `long_poll` seconds); the answer takes ``latency / 2`` back. A transfer's first byte comes
  `latency` after the planner starts it (request to the source, first byte back). `jitter`
  spreads every delay uniformly over [d/2, 3d/2] so simultaneous events do not always run in the
  same order. The tracker's `expire` runs every `tick` seconds. Stores take no time.
- Caches: with `node_cache_chunks`, a node's cache holds that many chunks at once; its readers
  consume chunks in order the moment they are contiguous, and the oldest consumed chunks are
  let go to make room (the planner's `released`); a transfer from a node that let the chunk go
  is a 404 (`missing`).
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
N·F/(u_origin + Σu)), counting the root's upload in Σu (the floor of docs/ARCHITECTURE.md; with
per-node rates, d is the slowest download and Σu the sum of the actual uploads).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.swarm.plan import Plan
from agent.swarm.planner import Decisions, LayerPlanner
from agent.swarm.protocol import PlanTarget
from agent.swarm.schedule import Actions, Assignment, LayerSchedule

MiB = 1 << 20
Mbit = 1_000_000 / 8  # bytes per second in one Mbit/s

ROOT_NAME = "root"
SIM_DIGEST = "sha256:" + "5" * 64

# Event kinds, in the order they are handled at equal times.
(_ORIGIN, _DONE, _START, _ARRIVE, _REPLY, _HOLD_END, _WAKE, _JOIN, _LEAVE, _EXPIRE, _TAIL) = range(
    11
)


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    nodes: int
    file_size: int  # bytes
    chunk_size: int  # bytes
    upload: float  # bytes/s, each node
    download: float  # bytes/s, each node
    origin: float  # bytes/s, origin -> root
    root_upload: float | None = None  # bytes/s; default: `upload`
    want: int = 2  # the planner's transfer slots: one, and a spare for a second source
    window: int = 8
    upload_slots: int = 1
    root_upload_slots: int = 1
    endgame: int = 2
    transfer_timeout: float = 10.0
    latency: float = 0.001  # s: a round trip (a plan request and its answer; a chunk request)
    long_poll: float = 2.0  # s the root holds a standing request with nothing for it
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
    # Chunks each node's cache holds at once (None: the whole layer). Readers consume chunks
    # in order as they arrive; the oldest consumed chunks are let go to make room.
    node_cache_chunks: int | None = None

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
        "tailed",
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
        self.tailed = False  # its planner was told it is finishing


class Simulation:
    """One run. `run()` returns the result; the object can be inspected afterwards.

    Every agent is a real `LayerPlanner`, the root a real `LayerSchedule` behind a model of
    the tracker (`agent.swarm.tracker`): reports are applied, the request's demand is stated,
    assignments wait in the node's mailbox and go out with its next answer, and a standing
    request with nothing to deliver is held up to `long_poll` seconds. Messages take
    ``latency / 2`` each way; a transfer's first byte comes `latency` after it starts.
    """

    def __init__(self, config: SwarmConfig) -> None:
        self.config = c = config
        n = c.nodes
        self.root = n  # index of the root in the per-node arrays
        self.names = [f"n{i}" for i in range(n)] + [ROOT_NAME]
        self.ids = [f"{name}:1" for name in self.names]  # node ids, as on the P2P port
        self.index = {ident: i for i, ident in enumerate(self.ids)}
        self.up_cap = [c.upload_of(i) for i in range(n)] + [c.root_rate]
        self.down_cap = [c.download_of(i) for i in range(n)] + [math.inf]
        self.ups: list[set[_Flow]] = [set() for _ in range(n + 1)]
        self.downs: list[set[_Flow]] = [set() for _ in range(n + 1)]
        self.flows: dict[tuple[int, int, int], _Flow] = {}  # (dst, chunk, src)
        self.held = [bytearray(c.chunk_count) for _ in range(n)]  # in the node's cache now
        self.got = [bytearray(c.chunk_count) for _ in range(n)]  # stored at some point
        self.held_n = [0] * n
        self.consumed = [0] * n  # the node's readers have read chunks below this
        self.have = [0] * n  # chunks got (completion)
        self.alive = [False] * n
        self.gone = [False] * n
        self.completion: dict[str, float] = {}
        self.uploaded = [0] * (n + 1)
        self.downloaded = [0] * n
        self.transfers = 0
        self.cancelled = 0
        self.events = 0
        self.requests = 0
        self.heap: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.running: set[_Flow] = set()
        self.origin_chunks = 0  # chunks the root holds
        self.banned: set[int] = set()  # sources the root banned for bad data
        self.rng = random.Random(c.seed)
        self.unfinished = n
        self.hashes = {k: f"{k:064x}" for k in range(c.chunk_count)}
        self.bad_hash = "f" * 64
        self.schedule = LayerSchedule(
            chunk_count=c.chunk_count,
            root=self.ids[self.root],
            window=c.window,
            upload_slots=c.upload_slots,
            root_upload_slots=c.root_upload_slots,
            transfer_timeout=c.transfer_timeout,
            endgame=c.endgame,
        )
        self.planners = [
            LayerPlanner(
                digest=SIM_DIGEST,
                upstream="registry.sim",
                repo="sim/layer",
                chunk_size=c.chunk_size,
                parallel=c.want,
            )
            for _ in range(n)
        ]
        self.wake_version = [0] * n
        self.mailbox: list[list[tuple[int, str]]] = [[] for _ in range(n)]
        self.held_poll: list[tuple[PlanTarget, int] | None] = [None] * n
        self.hold_version = [0] * n

    def push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, obj, version))

    def delay(self, base: float) -> float:
        return base * (0.5 + self.rng.random()) if self.config.jitter else base

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
            self.handle(now, kind, obj, version)
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

    def handle(self, now: float, kind: int, obj: object, version: int) -> None:
        if kind == _DONE:
            assert isinstance(obj, _Flow)
            if obj.running and obj.version == version:
                self.finish(obj, now)
        elif kind == _TAIL:  # as the driver: less than the planner's lead to go
            assert isinstance(obj, _Flow)
            if obj.running and obj.version == version and not obj.tailed:
                obj.tailed = True
                source = self.ids[obj.src]
                self.agent_does(
                    obj.dst, self.planners[obj.dst].finishing(obj.chunk, source, now), now
                )
        elif kind == _START:
            assert isinstance(obj, _Flow)
            self.start(obj, now)
        elif kind == _ORIGIN:
            assert isinstance(obj, int)
            self.origin_chunks = obj
            self.deliver(self.schedule.origin_progress(obj, now), now)
        elif kind == _ARRIVE:
            node, request = obj  # type: ignore[misc]
            self.root_receives(node, request, now)
        elif kind == _REPLY:
            node, request, plan = obj  # type: ignore[misc]
            if self.alive[node] and not self.planners[node].over:
                decisions = self.planners[node].answered(request, plan, self.ids[self.root], now)
                self.agent_does(node, decisions, now)
        elif kind == _HOLD_END:
            assert isinstance(obj, int)
            if self.hold_version[obj] == version and self.held_poll[obj] is not None:
                self.answer_held(obj, now)
        elif kind == _WAKE:
            assert isinstance(obj, int)
            if self.wake_version[obj] == version and self.alive[obj]:
                self.agent_does(obj, self.planners[obj].tick(now), now)
        elif kind == _JOIN:
            assert isinstance(obj, int)
            self.alive[obj] = True
            self.agent_does(obj, self.planners[obj].start(now), now)
        elif kind == _LEAVE:
            assert isinstance(obj, int)
            self.leave(obj, now)
        elif kind == _EXPIRE:
            if self.flows:
                self.deliver(self.schedule.expire(now), now)
            self.push(now + self.config.tick, _EXPIRE)

    def stuck(self) -> str:
        missing = {
            self.names[i]: self.config.chunk_count - self.have[i]
            for i in range(self.config.nodes)
            if not self.gone[i] and self.have[i] < self.config.chunk_count
        }
        return f"nodes still missing chunks: {missing}"

    # The root: the tracker's handling of plan requests -----------------------------------

    def root_receives(self, node: int, request: PlanTarget, now: float) -> None:
        if not self.alive[node]:
            return
        self.requests += 1
        ident, schedule = self.ids[node], self.schedule
        if request.fresh:  # as the tracker: a new download there forgets the old one
            self.mailbox[node] = []
            self.deliver(schedule.leave(ident, now), now)
        for chunk, source in request.done:
            self.deliver(schedule.completed(ident, chunk, source, now), now)
        for chunk, source, bad in request.failed:
            if bad:
                self.banned.add(self.index[source])
            self.deliver(schedule.failed(ident, chunk, source, bad_data=bad, now=now), now)
        for chunk, source in request.finishing:
            self.deliver(schedule.finishing(ident, chunk, source, now), now)
        self.deliver(schedule.request(ident, have=request.have, want=request.want, now=now), now)
        if request.poll and request.want and not self.mailbox[node]:
            self.hold_version[node] += 1
            self.held_poll[node] = (request, self.hold_version[node])
            self.push(now + self.config.long_poll, _HOLD_END, node, self.hold_version[node])
            return
        self.reply(node, request, now)

    def deliver(self, actions: Actions, now: float) -> None:
        """The schedule's decisions into the mailboxes; a held request with work answers."""
        index = self.index
        for a in actions.cancelled:
            box = self.mailbox[index[a.node]]
            if (a.chunk, a.source) in box:
                box.remove((a.chunk, a.source))
        woken = set()
        for a in actions.assigned:
            dst, src = index[a.node], index[a.source]
            self.check(a, dst, src)
            self.mailbox[dst].append((a.chunk, a.source))
            woken.add(dst)
        for node in sorted(woken):
            if self.held_poll[node] is not None:
                self.answer_held(node, now)

    def answer_held(self, node: int, now: float) -> None:
        held = self.held_poll[node]
        assert held is not None
        self.held_poll[node] = None
        self.reply(node, held[0], now)

    def reply(self, node: int, request: PlanTarget, now: float) -> None:
        assignments = tuple(self.mailbox[node])
        self.mailbox[node] = []
        plan = Plan(
            size=self.config.file_size,
            chunk_size=self.config.chunk_size,
            chunk_sha256={chunk: self.hashes[chunk] for chunk, _ in assignments},
            assignments=assignments,
        )
        self.push(now + self.delay(self.config.latency / 2), _REPLY, (node, request, plan))

    def check(self, a: Assignment, dst: int, src: int) -> None:
        """The schedule's promises, against what the simulation knows (AssertionError)."""
        chunk = a.chunk
        assert self.alive[dst] and not self.gone[dst], f"{a}: to a node that is not there"
        if src == self.root:
            assert chunk < self.origin_chunks, f"{a}: the root does not have it yet"
        else:
            assert self.alive[src] and not self.gone[src], f"{a}: from a node that is not there"
            # It held the chunk (it may have let it go since; the root hears of that late).
            assert self.got[src][chunk], f"{a}: the source never held it"
            assert src not in self.banned, f"{a}: from a banned source"

    # Agents: each a real LayerPlanner ---------------------------------------------------

    def agent_does(self, node: int, d: Decisions, now: float) -> None:
        """Carry out a planner's decisions, as `agent.swarm.download` does."""
        assert d.error is None and d.fallback is None, f"{self.names[node]}: {d}"
        if d.size is not None:  # nothing cached before: the layer is admitted empty
            window = self.config.node_cache_chunks
            self.agent_does(node, self.planners[node].admitted((), now, window=window), now)
            return
        if d.drop_poll and self.held_poll[node] is not None:
            self.held_poll[node] = None
        for t in d.cancel:
            flow = self.flows.pop((node, t.chunk, self.index[t.source]), None)
            if flow is not None:
                self.cancelled += 1
                self.stop(flow, now)
        for t in d.start:
            src = self.index[t.source]
            flow = _Flow(src, node, t.chunk, self.config.chunk_bytes(t.chunk))
            self.flows[(node, t.chunk, src)] = flow
            self.transfers += 1
            self.push(now + self.delay(self.config.latency), _START, flow)
        for request in d.requests:
            self.push(now + self.delay(self.config.latency / 2), _ARRIVE, (node, request))
        if d.store is not None:
            self.store(node, d.store.chunk, d.store.source, now)
        if d.wake_at is not None:
            self.wake_version[node] += 1
            self.push(d.wake_at, _WAKE, node, self.wake_version[node])

    def store(self, node: int, chunk: int, source: str, now: float) -> None:
        if not self.got[node][chunk]:
            self.got[node][chunk] = 1
            self.have[node] += 1
            if self.have[node] == self.config.chunk_count:
                self.completion[self.names[node]] = now
                self.unfinished -= 1
        if not self.held[node][chunk]:
            self.held[node][chunk] = 1
            self.held_n[node] += 1
        self.agent_does(node, self.planners[node].stored(chunk, source, now), now)
        if self.config.node_cache_chunks is not None:
            self.make_room(node, now)

    def make_room(self, node: int, now: float) -> None:
        """The node's readers consume in order; its cache lets the oldest consumed chunks go
        so that the next transfers fit (as the driver will, through `released`)."""
        c, got, held = self.config, self.got[node], self.held[node]
        while self.consumed[node] < c.chunk_count and got[self.consumed[node]]:
            self.consumed[node] += 1
        assert c.node_cache_chunks is not None
        excess = self.held_n[node] + c.want - c.node_cache_chunks
        gone = []
        for chunk in range(self.consumed[node]):
            if len(gone) >= excess:
                break
            if held[chunk]:
                held[chunk] = 0
                gone.append(chunk)
        self.held_n[node] -= len(gone)
        decisions = self.planners[node].released(gone, self.consumed[node], now)
        self.agent_does(node, decisions, now)

    def leave(self, node: int, now: float) -> None:
        self.alive[node] = False
        self.gone[node] = True
        self.held_poll[node] = None
        if self.have[node] < self.config.chunk_count:
            self.unfinished -= 1
        for key, flow in list(self.flows.items()):
            if node in (flow.src, flow.dst):
                del self.flows[key]
                self.stop(flow, now)
                if flow.dst != node and self.alive[flow.dst]:  # its source vanished
                    planner = self.planners[flow.dst]
                    source = self.ids[node]
                    self.agent_does(flow.dst, planner.failed(flow.chunk, source, now), now)
        self.deliver(self.schedule.leave(self.ids[node], now), now)

    # Links -------------------------------------------------------------------------------

    def start(self, flow: _Flow, now: float) -> None:
        if self.flows.get((flow.dst, flow.chunk, flow.src)) is not flow:
            return  # cancelled before its first byte
        if flow.src != self.root and not self.held[flow.src][flow.chunk]:
            del self.flows[(flow.dst, flow.chunk, flow.src)]  # let go there: 404
            planner = self.planners[flow.dst]
            missing = planner.missing(flow.chunk, self.ids[flow.src], now)
            self.agent_does(flow.dst, missing, now)
            return
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
        if not f.tailed:
            lead = self.planners[f.dst].finish_lead  # only agents download
            self.push(max(now, now + f.remaining / rate - lead), _TAIL, f, f.version)

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
        sha = self.bad_hash if flow.src in self.config.liars else self.hashes[flow.chunk]
        planner = self.planners[flow.dst]
        decisions = planner.received(flow.chunk, self.ids[flow.src], sha, now)
        self.agent_does(flow.dst, decisions, now)


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
