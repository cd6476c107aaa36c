"""A discrete-event simulation of an image pull through the swarm, on the real code: every
layer has a real root schedule (`agent.swarm.schedule.LayerSchedule`) on the root that owns it
(rendezvous order, as agents choose), every agent a real planner
(`agent.swarm.planner.LayerPlanner`) per layer, over modelled links, disks, CPUs and roots.

Model
-----
- The origin sends each layer to its root in order, chunk after chunk, from the moment the
  root first hears of the layer; the roots fetching at once share the origin's upload (and
  each its own download). The root reports each chunk as it lands (`origin_progress`).
- Tiers (`tiers`, the product's `parentRoots`): node i asks root i mod K for every layer; each
  root schedules its group's copy of a layer, and a root that does not own the layer fetches
  it as one more node of the owner's swarm (its link and core shared by both roles), telling
  its own schedule the leading run of chunks it holds. Roots (``root<j>``) hold whole layers.
- N agents, node i named ``n<i>``, each with upload `upload` and a receive rate of
  min(link, disk, one core at the agent's CPU per GiB). An agent pulls `layers_at_once` layers
  at a time in image order (containerd's max_concurrent_downloads; all of them when None),
  the next one as one completes, each with its own planner. Node i starts at
  ``i * start_spread / N``.
- Plan requests reach the root ``latency / 2`` later, queue for its one core
  (`root_request_s` each, first come first served), the tracker's `agent.swarm.intake`
  feeds the reports and demand to the schedule, and the answer is the node's mailbox of
  assignments (a standing request with nothing to deliver is held up to `long_poll` seconds)
  ``latency / 2`` later. A transfer's first byte comes `latency` after the planner starts it;
  a received chunk is stored (hashed, written, reported) `store_delay` after its last byte.
  `jitter` spreads every delay uniformly over [d/2, 3d/2] so simultaneous events do not
  always run in the same order. Each schedule's `expire` runs every `tick`.
- Links (default): a node's concurrent uploads share its upload rate equally, its downloads
  its receive rate, and a transfer runs at the smaller of its two shares, whichever layers
  they belong to (the roots' schedules do not know of each other's transfers, as in the real
  cluster). Max-min fair sharing, which TCP over shaped links approaches, gives every
  transfer at least that much, so this model errs on the slow side; and it is local: an event
  costs O(slots), and 1000 nodes run. `fair_sharing=True` computes max-min fair rates over
  every link instead (progressive filling: small swarms only).
- Caches: with `node_cache_chunks`, a layer with more chunks than that passes through a
  window of that many: its readers consume chunks in order as they arrive, the oldest consumed
  are let go (the planner's `released`), never one being sent; a transfer from a node that
  let the chunk go is a 404.
- Faults: `liars` serve bytes that fail verification; `leaves` maps a node to the time it
  disappears (it stops counting); `crashes` one to the time its process dies: its uploads
  break (their receivers report them failed), its downloads' sources never hear of it, a
  transfer from it is refused, and its roots learn only as the tracker does (it stops asking
  for `gone_after` seconds, or a failure is reported of a source that silent).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable

from agent.sim.links import RAMP_STEPS, Lanes, climbed, fair_rates, spread_over_seconds
from agent.sim.links import Flow as _Flow
from agent.sim.model import SwarmConfig, SwarmResult, sim_layers
from agent.sim.nodes import NodeSide
from agent.sim.roots import (
    EV_ARRIVE,
    EV_CRASH,
    EV_DONE,
    EV_EXPIRE,
    EV_HANDLE,
    EV_HOLD_END,
    EV_JOIN,
    EV_LEAVE,
    EV_RAMP,
    EV_REPLY,
    EV_START,
    EV_STORE,
    EV_TAIL,
    EV_WAKE,
    RootSide,
)
from agent.swarm.planner import LayerPlanner
from agent.swarm.protocol import PlanTarget

PROGRESS_EVERY = 20_000  # events between calls of the progress callback

Progress = Callable[[float, float], None]  # (simulated time, share of all chunks stored)


class Simulation(RootSide, NodeSide):
    """One run. `run()` returns the result; the object can be inspected afterwards."""

    def __init__(self, config: SwarmConfig, progress: Progress | None = None) -> None:
        self.config = c = config
        n, k = c.nodes, c.roots
        self.progress = progress
        self.origin = n + k  # index of the origin in the per-node arrays
        self.names = [f"n{i}" for i in range(n)] + [f"root{j}" for j in range(k)] + ["origin"]
        self.ids = [f"{name}:1" for name in self.names]  # node ids, as on the P2P port
        self.index = {ident: i for i, ident in enumerate(self.ids)}
        root_rate = c.root_rate
        root_down = c.root_download if c.root_download is not None else c.download
        self.up_cap = [c.upload_of(i) for i in range(n)] + [root_rate] * k + [c.origin]
        self.down_cap = [c.download_of(i) for i in range(n)] + [root_down] * k + [math.inf]
        self.ups: list[set[_Flow]] = [set() for _ in range(n + k + 1)]
        self.downs: list[set[_Flow]] = [set() for _ in range(n + k + 1)]
        self.layers = sim_layers(c, self.ids[n : n + k])
        self.root_of = [self.index[layer.root_id] - n for layer in self.layers]  # 0..k-1
        self.flows: dict[tuple[int, int, int, int], _Flow] = {}  # (dst, layer, chunk, src)
        # Each node's layers in image order: with tiers, its group's copies (node i: root i
        # mod K); `copy_of` finds a group's copy of an image layer. Roots (n..n+k-1) download
        # too with tiers: the layers they do not own, through the owner's swarm.
        self.copy_of = {(la.group, la.image_layer): la.index for la in self.layers}
        self.node_layers = [
            [la.index for la in self.layers if la.group in (None, i % k)] for i in range(n)
        ]
        self.held = [self._per_layer(i) for i in range(n + k)]
        self.got = [self._per_layer(i) for i in range(n + k)]
        self.held_n = [[0] * len(self.layers) for _ in range(n)]
        self.consumed = [[0] * len(self.layers) for _ in range(n)]  # readers are past these
        self.layer_have = [[0] * len(self.layers) for _ in range(n)]
        self.have = [0] * n  # chunks got, every layer (completion)
        self.stored = 0  # chunks got, every node
        self.progress_at = 0.0  # the last chunk stored anywhere (stall_after)
        self.next_layer = [0] * n  # the next layer each agent starts
        self.alive = [False] * n + [True] * k
        self.gone = [False] * (n + k)
        self.completion: dict[str, float] = {}
        self.uploaded = [0] * (n + k + 1)
        self.downloaded = [0] * (n + k + 1)
        self.origin_seconds: dict[int, float] = {}  # second -> bytes the origin sent in it
        self.lanes = Lanes(n)  # what each agent received when (link use, lanes' idle time)
        self.transfers = self.cancelled = self.events = 0
        self.requests = [0] * k
        self.schedule_cpu = [0.0] * k
        self.root_free = [0.0] * k  # when each root's core is next free
        self.heap: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.running: set[_Flow] = set()
        self.banned: set[int] = set()  # sources a root banned for bad data
        self.crashed: set[int] = set()  # died without a word: the roots may still count them
        self.seen: dict[tuple[int, int], float] = {}  # (node, layer) -> its last plan request
        self.rng = random.Random(c.seed)
        self.unfinished = n
        self.total_chunks = c.chunk_count
        self.bad_hash = "f" * 64
        self.planners: list[dict[int, LayerPlanner]] = [{} for _ in range(n + k)]
        self.wake_version: dict[tuple[int, int], int] = {}
        self.mailbox: dict[tuple[int, int], list[tuple[int, str]]] = {}
        self.held_poll: dict[tuple[int, int], PlanTarget] = {}
        self.hold_version: dict[tuple[int, int], int] = {}
        # (node, layer, chunk): on its way to the node, in its last bytes (the planner said
        # `finishing`, so the root counts the node as a holder), and the transfers from there
        # whose bytes are in and whose end waits for it to land (the node's P2P port relays
        # the bytes in so far and the rest once the chunk is verified there).
        self.landing: set[tuple[int, int, int]] = set()
        self.parked: dict[tuple[int, int, int], list[_Flow]] = {}
        # (node, layer, chunk): verified, not stored yet: servable from the node's memory.
        self.verified: set[tuple[int, int, int]] = set()

    def _per_layer(self, node: int) -> list[bytearray]:
        """A chunk flag per chunk of each layer the node takes part in (none elsewhere)."""
        mine = set(self.node_layers[node]) if node < self.config.nodes else None
        return [
            bytearray(la.count if mine is None or la.index in mine else 0) for la in self.layers
        ]

    def push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, obj, version))

    def delay(self, base: float) -> float:
        return base * (0.5 + self.rng.random()) if self.config.jitter else base

    def run(self) -> SwarmResult:
        c = self.config
        for i in range(c.nodes):
            self.push(i * c.start_spread / c.nodes, EV_JOIN, i)
        for i, t in c.leaves.items():
            self.push(t, EV_LEAVE, i)
        for i, t in c.crashes.items():
            self.push(t, EV_CRASH, i)
        self.push(c.tick, EV_EXPIRE)
        limit = c.time_limit if c.time_limit is not None else 50 * c.t_min
        stall, now = c.stall_after, 0.0
        joined = (c.nodes - 1) * c.start_spread / c.nodes  # a quiet spell counts from then on
        while self.heap:
            now, kind, _, obj, version = heapq.heappop(self.heap)
            if now > limit:
                raise RuntimeError(f"simulation passed {limit:.1f}s: {self.stuck()}")
            if kind == EV_EXPIRE and now - max(self.progress_at, joined) > stall:  # (a tick)
                raise RuntimeError(
                    f"no chunk stored for {stall:.0f}s at {now:.1f}s: {self.stuck()}"
                )
            self.events += 1
            self.handle(now, kind, obj, version)
            if self.unfinished == 0:
                break
            if self.progress is not None and self.events % PROGRESS_EVERY == 0:
                self.progress(now, self.stored / (c.nodes * self.total_chunks))
        return self.result(now)

    def result(self, now: float) -> SwarmResult:
        c, n = self.config, self.config.nodes
        roots = range(n, n + c.roots)
        return SwarmResult(
            config=c,
            completion=dict(self.completion),
            t_min=c.t_min,
            root_upload_bytes=sum(self.uploaded[r] for r in roots),
            origin_bytes=self.uploaded[self.origin],
            origin_peak=max(self.origin_seconds.values(), default=0.0),
            total_bytes=sum(self.uploaded[: self.origin]),
            uploaded={self.names[i]: self.uploaded[i] for i in range(n + c.roots)},
            downloaded={self.names[i]: self.downloaded[i] for i in range(n)},
            link_use=sum(self.downloaded[:n])
            / max(sum(self.lanes.receiving(i) * self.down_cap[i] for i in range(n)), 1e-9),
            lane_idle=self.lanes.idle_share(),
            phase_use=self.lanes.phases(
                [self.completion.get(self.names[i]) for i in range(n)], self.down_cap[:n]
            ),
            transfers=self.transfers,
            cancelled=self.cancelled,
            events=self.events,
            requests={self.ids[r]: self.requests[r - n] for r in roots},
            schedule_cpu_s={self.ids[r]: self.schedule_cpu[r - n] for r in roots},
        )

    def handle(self, now: float, kind: int, obj: object, version: int) -> None:
        if kind == EV_DONE:
            assert isinstance(obj, _Flow)
            if obj.running and obj.version == version:
                left = obj.left(now)
                if left > 1.0:  # it slowed down since: its end is later
                    obj.due = now + left / obj.rate
                    obj.version += 1
                    self.push(obj.due, EV_DONE, obj, obj.version)
                else:
                    self.finish(obj, now)
        elif kind == EV_TAIL:  # as the driver: less than the planner's lead to go
            assert isinstance(obj, _Flow)
            if obj.running and obj.tail_version == version and not obj.tailed:
                planner = self.planners[obj.dst][obj.layer]
                early = obj.left(now) / obj.rate - planner.finish_lead
                if early > 1e-9:
                    obj.tail_due = now + early
                    obj.tail_version += 1
                    self.push(obj.tail_due, EV_TAIL, obj, obj.tail_version)
                    return
                obj.tailed = True
                self.landing.add((obj.dst, obj.layer, obj.chunk))
                waited = obj.began - obj.asked
                decisions = planner.finishing(obj.chunk, self.ids[obj.src], now, waited=waited)
                self.agent_does(obj.dst, obj.layer, decisions, now)
        elif kind == EV_RAMP:
            assert isinstance(obj, _Flow)
            if obj.running and obj.climbing:
                obj.climbing = False
                self.aim(obj, obj.share, now)
        elif kind == EV_START:
            assert isinstance(obj, _Flow)
            self.start(obj, now)
        elif kind == EV_STORE:
            node, layer, chunk, source = obj  # type: ignore[misc]
            if self.alive[node]:
                self.store(node, layer, chunk, source, now)
        elif kind == EV_ARRIVE:
            self.queue_at_root(obj, now)  # type: ignore[arg-type]
        elif kind == EV_HANDLE:
            node, layer, request = obj  # type: ignore[misc]
            self.root_receives(node, layer, request, now)
        elif kind == EV_REPLY:
            node, layer, request, plan = obj  # type: ignore[misc]
            planner = self.planners[node][layer]
            if self.alive[node] and not planner.over:
                root = self.layers[layer].root_id
                self.agent_does(node, layer, planner.answered(request, plan, root, now), now)
        elif kind == EV_HOLD_END:
            if self.hold_version.get(obj) == version and obj in self.held_poll:  # type: ignore[comparison-overlap]
                self.answer_held(obj, now)  # type: ignore[arg-type]
        elif kind == EV_WAKE:
            node, layer = obj  # type: ignore[misc]
            if self.wake_version.get((node, layer)) == version and self.alive[node]:
                self.agent_does(node, layer, self.planners[node][layer].tick(now), now)
        elif kind == EV_JOIN:
            assert isinstance(obj, int)
            self.alive[obj] = True
            self.start_layers(obj, now)
        elif kind == EV_LEAVE:
            assert isinstance(obj, int)
            self.leave(obj, now)
            for layer in self.layers:
                self.deliver(layer.index, layer.schedule.leave(self.ids[obj], now), now)
        elif kind == EV_CRASH:
            assert isinstance(obj, int)
            self.crashed.add(obj)
            self.leave(obj, now)
        elif kind == EV_EXPIRE:
            if self.flows or self.crashed:  # (the tracker's clock runs on while it waits)
                for layer in self.layers:
                    self.deliver(layer.index, self.timed(layer, layer.schedule.expire, now), now)
                    self.forget_silent(layer, now)
            self.push(now + self.config.tick, EV_EXPIRE)

    def stuck(self) -> str:
        missing = {
            self.names[i]: self.total_chunks - self.have[i]
            for i in range(self.config.nodes)
            if not self.gone[i] and self.have[i] < self.total_chunks
        }
        return f"nodes still missing chunks: {dict(list(missing.items())[:20])}"

    # Links -------------------------------------------------------------------------------

    def start(self, flow: _Flow, now: float) -> None:
        if self.flows.get((flow.dst, flow.layer, flow.chunk, flow.src)) is not flow:
            return  # cancelled before its first byte
        if flow.src in self.crashed:  # its P2P port is closed: the connection is refused
            self.cut(flow, now)
            return
        serves = (
            flow.src != self.origin and flow.src != self.root_of[flow.layer] + self.config.nodes
        )
        # Not stored there, verified in the download's memory, nor landing (relayed: `finish`):
        if (
            serves
            and not self._servable(flow)
            and (flow.src, flow.layer, flow.chunk) not in self.landing
        ):
            del self.flows[(flow.dst, flow.layer, flow.chunk, flow.src)]  # let go there: 404
            planner = self.planners[flow.dst][flow.layer]
            missing = planner.missing(flow.chunk, self.ids[flow.src], now)
            self.agent_does(flow.dst, flow.layer, missing, now)
            return
        flow.running = True
        flow.t = flow.began = now
        self.ups[flow.src].add(flow)
        self.downs[flow.dst].add(flow)
        self.lanes.moved(flow.dst, flow.layer, now, 1)
        self.running.add(flow)
        self.shares_changed(flow, now)

    def cut(self, flow: _Flow, now: float) -> None:
        """The transfer breaks off (refused; its source's copy failed): the receiver hears."""
        del self.flows[(flow.dst, flow.layer, flow.chunk, flow.src)]
        self.stop(flow, now)
        failed = self.planners[flow.dst][flow.layer].failed(flow.chunk, self.ids[flow.src], now)
        self.agent_does(flow.dst, flow.layer, failed, now)

    def shares_changed(self, flow: _Flow, now: float) -> None:
        """A flow joined or left its two links: the rates there change."""
        if self.config.fair_sharing:
            self.rebalance(now)
        else:
            self.retime(self.ups[flow.src], now)
            self.retime(self.downs[flow.dst], now)

    def stop(self, flow: _Flow, now: float) -> None:
        """Take a flow off its links and count the bytes it moved."""
        if flow.relayed:
            return  # off its links and counted when its bytes were in
        if flow.running:
            flow.remaining = max(0.0, flow.left(now))
            flow.running = False
            self.ups[flow.src].discard(flow)
            self.downs[flow.dst].discard(flow)
            self.lanes.moved(flow.dst, flow.layer, now, -1)
            self.running.discard(flow)
            self.shares_changed(flow, now)
        moved = flow.size - round(flow.remaining)
        self.uploaded[flow.src] += moved
        self.downloaded[flow.dst] += moved
        self.lanes.received(flow.dst, flow.began, now, moved)
        if flow.src == self.origin and moved:
            spread_over_seconds(self.origin_seconds, flow.began, now, moved)

    def retime(self, flows: set[_Flow], now: float) -> None:
        """Equal shares at both ends, the smaller one wins (the default, local model)."""
        ups, downs, up_cap, down_cap = self.ups, self.downs, self.up_cap, self.down_cap
        for f in flows:
            self.aim(
                f, min(up_cap[f.src] / len(ups[f.src]), down_cap[f.dst] / len(downs[f.dst])), now
            )

    def aim(self, f: _Flow, share: float, now: float) -> None:
        """The flow's links give it `share` now: a smaller one it takes at once (the queue
        forces it), a larger one over time (`SwarmConfig.ramp`, TCP's climb: a step each
        RAMP_STEPS-th of `ramp` chunk times at its receiver's link; fluid links at once)."""
        f.share = share
        if self.config.ramp <= 0 or share <= f.rate:
            self.set_rate(f, share, now)
        elif not f.climbing:  # (a step already due climbs to the new share)
            self.set_rate(f, climbed(f.rate, share), now)
            if f.rate < share:
                f.climbing = True
                whole = self.layers[f.layer].nominal(f.chunk)
                tau = self.config.ramp * whole / self.down_cap[f.dst]
                self.push(now + tau / RAMP_STEPS, EV_RAMP, f, 0)

    def set_rate(self, f: _Flow, rate: float, now: float) -> None:
        if rate == f.rate:
            return
        f.remaining = max(0.0, f.left(now))
        f.t = now
        f.rate = rate
        end = now + f.remaining / rate
        if end < f.due:  # sooner than its event: a new one (a later end waits for the old)
            f.due = end
            f.version += 1
            self.push(end, EV_DONE, f, f.version)
        if not f.tailed and f.src != self.origin:  # planners pipeline; origin fetches stream
            tail = max(now, end - self.planners[f.dst][f.layer].finish_lead)
            if tail < f.tail_due:
                f.tail_due = tail
                f.tail_version += 1
                self.push(tail, EV_TAIL, f, f.tail_version)

    def rebalance(self, now: float) -> None:
        """Max-min fair rates over every link (progressive filling): O(links x flows)."""
        for f, rate in fair_rates(self.running, self.up_cap, self.down_cap).items():
            self.aim(f, max(rate, 1e-9), now)

    def _servable(self, flow: _Flow) -> bool:
        """The flow's source holds its chunk: stored, or verified in memory."""
        key = (flow.src, flow.layer, flow.chunk)
        return bool(self.held[flow.src][flow.layer][flow.chunk]) or key in self.verified

    def finish(self, flow: _Flow, now: float) -> None:
        serves = (
            flow.src != self.origin and flow.src != self.root_of[flow.layer] + self.config.nodes
        )
        if serves and not flow.relayed and not self._servable(flow):
            # Relayed ahead of its source's copy (never let go while sent: its slot is kept):
            # the end waits for it, or the relay is cut (that copy failed its check there).
            key = (flow.src, flow.layer, flow.chunk)
            assert not self.got[flow.src][flow.layer][flow.chunk], f"{key} was let go"
            if key not in self.landing:
                self.cut(flow, now)
                return
            flow.remaining = 0.0
            self.stop(flow, now)
            flow.relayed = True
            self.parked.setdefault(key, []).append(flow)
            return
        del self.flows[(flow.dst, flow.layer, flow.chunk, flow.src)]
        flow.remaining = 0.0
        self.stop(flow, now)
        layer = self.layers[flow.layer]
        if flow.src == self.origin:  # a chunk landed at the root
            layer.origin_chunks = flow.chunk + 1
            self.progress_at = now
            actions = self.timed(layer, layer.schedule.origin_progress, flow.chunk + 1, now)
            self.deliver(layer.index, actions, now)
            self.fetch_from_origin(layer, now)
            return
        sha = self.bad_hash if flow.src in self.config.liars else layer.hashes[flow.chunk]
        planner = self.planners[flow.dst][flow.layer]
        waited = None if flow.tailed else flow.began - flow.asked
        decisions = planner.received(flow.chunk, self.ids[flow.src], sha, now, waited=waited)
        self.agent_does(flow.dst, flow.layer, decisions, now)
        landing = (flow.dst, flow.layer, flow.chunk)
        if landing in self.landing and flow.chunk not in planner.fetching:
            if flow.chunk not in planner.storing and flow.chunk not in planner.got:
                self.landed(flow.dst, flow.layer, flow.chunk, now)  # bad bytes: not coming


def simulate(config: SwarmConfig, progress: Progress | None = None) -> SwarmResult:
    return Simulation(config, progress).run()
