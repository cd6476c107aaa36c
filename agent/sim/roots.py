"""The roots of a simulated swarm: the tracker's handling of plan requests (`Simulation` in
`agent.sim.engine` takes these methods, and owns the state they read): each request queues
at its root's one core, the reports go into the layer's real schedule, the assignments into
mailboxes, and a standing request with nothing for it is held. A root's own download comes
from the origin, or (tiers) through the swarm of the root that owns the layer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from agent.sim.links import Flow as _Flow
from agent.sim.model import SimLayer, SwarmConfig
from agent.swarm.intake import take_request
from agent.swarm.plan import Plan
from agent.swarm.protocol import PlanTarget
from agent.swarm.schedule import Actions, Assignment

if TYPE_CHECKING:
    from agent.swarm.planner import Decisions, LayerPlanner

T = TypeVar("T")

# Event kinds, in the order they are handled at equal times.
(
    EV_DONE,
    EV_STORE,
    EV_START,
    EV_HANDLE,
    EV_ARRIVE,
    EV_REPLY,
    EV_HOLD_END,
    EV_WAKE,
    EV_JOIN,
    EV_LEAVE,
    EV_CRASH,
    EV_EXPIRE,
    EV_TAIL,
    EV_RAMP,
) = range(14)


_PLAN_DEFAULTS = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    for f in dataclasses.fields(Plan)
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}


def trusted_plan(**fields: object) -> Plan:
    """A Plan built without its checks: the simulated tracker makes only well-formed ones,
    and the checks (meant for replies off the network) were a tenth of a run's CPU."""
    plan = object.__new__(Plan)
    for name, value in {**_PLAN_DEFAULTS, **fields}.items():
        object.__setattr__(plan, name, value)
    return plan


class RootSide:
    """The roots' half of a `Simulation` (the attributes are the simulation's)."""

    config: SwarmConfig
    layers: list[SimLayer]
    root_of: list[int]
    index: dict[str, int]
    ids: list[str]
    alive: list[bool]
    gone: list[bool]
    got: list[list[bytearray]]
    landing: set[tuple[int, int, int]]
    verified: set[tuple[int, int, int]]
    banned: set[int]
    crashed: set[int]
    seen: dict[tuple[int, int], float]
    mailbox: dict[tuple[int, int], list[tuple[int, str]]]
    held_poll: dict[tuple[int, int], PlanTarget]
    hold_version: dict[tuple[int, int], int]
    requests: list[int]
    schedule_cpu: list[float]
    root_free: list[float]
    planners: list[dict[int, LayerPlanner]]
    copy_of: dict[tuple[int | None, int], int]
    flows: dict[tuple[int, int, int, int], _Flow]
    origin: int

    if TYPE_CHECKING:

        def push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None: ...
        def delay(self, base: float) -> float: ...
        def start(self, flow: _Flow, now: float) -> None: ...
        def new_planner(self, layer: SimLayer) -> LayerPlanner: ...
        def agent_does(self, node: int, layer: int, d: Decisions, now: float) -> None: ...

    def timed(self, layer: SimLayer, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A schedule call, its CPU counted against the layer's root."""
        started = time.process_time()
        answer = call(*args, **kwargs)
        self.schedule_cpu[self.root_of[layer.index]] += time.process_time() - started
        return answer

    def queue_at_root(self, message: tuple[int, int, PlanTarget], now: float) -> None:
        """A request waits for the root's core (one request at a time, in arrival order)."""
        cost = self.config.root_request_s
        if cost <= 0:
            self.root_receives(*message, now)
            return
        root = self.root_of[message[1]]
        self.root_free[root] = max(now, self.root_free[root]) + cost
        self.push(self.root_free[root], EV_HANDLE, message)

    def root_receives(self, node: int, layer_index: int, request: PlanTarget, now: float) -> None:
        if not self.alive[node]:
            return
        layer = self.layers[layer_index]
        self.requests[self.root_of[layer_index]] += 1
        if not layer.fetching:  # the root starts its download of the layer
            layer.fetching = True
            self.root_fetches(layer, now)
        ident, key = self.ids[node], (node, layer_index)
        self.seen[key] = now
        if request.fresh:  # as the tracker: a new download there forgets the old one
            self.mailbox[key] = []
        parts = take_request(layer.schedule, ident, request, now)
        while (fed := self.timed(layer, next, parts, None)) is not None:
            _, source, bad = fed.failed or (0, "", False)
            if bad:  # banned: no assignment from it, the failure's own answer's included
                self.banned.add(self.index[source])
            self.deliver(layer_index, fed.actions, now)
            if fed.failed is not None and not bad:
                self.failed_source(layer, self.index[source], now)
        if request.poll and request.want and not self.mailbox.get(key):
            version = self.hold_version[key] = self.hold_version.get(key, 0) + 1
            self.held_poll[key] = request
            self.push(now + self.config.long_poll, EV_HOLD_END, key, version)
            return
        self.reply(node, layer_index, request, now)

    def failed_source(self, layer: SimLayer, src: int, now: float) -> None:
        """As the tracker after a failure report (not bad data): a source that has not asked
        for `gone_after`, or has crashed (the tracker looked at its port), is forgotten."""
        if src >= self.config.nodes:
            return
        if now - self.seen.get((src, layer.index), 0.0) > self.config.gone_after:
            self.forget(layer, src, now)
        elif src in self.crashed and self.config.refused:  # the tracker looked: gone
            root = self.root_of[layer.index]
            for other in self.layers:  # (in each layer of that root's)
                if self.root_of[other.index] == root and (src, other.index) in self.seen:
                    self.forget(other, src, now)

    def forget_silent(self, layer: SimLayer, now: float) -> None:
        """As the tracker's expiry: a node receiving transfers that has not asked for
        `gone_after` seconds is gone."""
        receivers = {self.index[a.node] for a in layer.schedule.in_flight()}
        for node in sorted(receivers):
            seen = self.seen.get((node, layer.index))
            if seen is not None and now - seen > self.config.gone_after:
                self.forget(layer, node, now)

    def forget(self, layer: SimLayer, node: int, now: float) -> None:
        self.seen.pop((node, layer.index), None)
        self.deliver(layer.index, self.timed(layer, layer.schedule.leave, self.ids[node], now), now)

    def deliver(self, layer: int, actions: Actions, now: float) -> None:
        """The schedule's decisions into the mailboxes; a held request with work answers."""
        index = self.index
        for a in actions.cancelled:
            box = self.mailbox.get((index[a.node], layer))
            if box and (a.chunk, a.source) in box:
                box.remove((a.chunk, a.source))
        woken = set()
        for a in actions.assigned:
            dst, src = index[a.node], index[a.source]
            self.check(layer, a, dst, src)
            self.mailbox.setdefault((dst, layer), []).append((a.chunk, a.source))
            woken.add(dst)
        for node in sorted(woken):
            if (node, layer) in self.held_poll:
                self.answer_held((node, layer), now)

    def answer_held(self, key: tuple[int, int], now: float) -> None:
        request = self.held_poll.pop(key)
        self.reply(key[0], key[1], request, now)

    def reply(self, node: int, layer_index: int, request: PlanTarget, now: float) -> None:
        layer = self.layers[layer_index]
        assignments = tuple(self.mailbox.pop((node, layer_index), ()))
        plan = trusted_plan(
            size=layer.size,
            chunk_size=self.config.chunk_size,
            head_chunk=layer.layout.head_chunk,
            chunk_sha256={chunk: layer.hashes[chunk] for chunk, _ in assignments},
            assignments=assignments,
        )
        message = (node, layer_index, request, plan)
        self.push(now + self.delay(self.config.latency / 2), EV_REPLY, message)

    def check(self, layer_index: int, a: Assignment, dst: int, src: int) -> None:
        """The schedule's promises, against what the simulation knows (AssertionError)."""
        chunk, layer = a.chunk, self.layers[layer_index]
        if dst in self.crashed or src in self.crashed:
            return  # the root has not noticed yet: a transfer that will fail
        assert self.alive[dst] and not self.gone[dst], f"{a}: to a node that is not there"
        if src == self.root_of[layer_index] + self.config.nodes:
            assert chunk < layer.origin_chunks, f"{a}: the root does not have it yet"
        else:
            assert self.alive[src] and not self.gone[src], f"{a}: from a node that is not there"
            # It held the chunk (it may have let it go since; the root hears of that late), or
            # the chunk is in its last bytes there, or verified and on its way to the disk.
            key = (src, layer_index, chunk)
            coming = key in self.landing or key in self.verified
            assert self.got[src][layer_index][chunk] or coming, f"{a}: the source never held it"
            assert src not in self.banned, f"{a}: from a banned source"

    def root_fetches(self, layer: SimLayer, now: float) -> None:
        """The root's download of a layer: from the origin, or (tiers, a layer another root
        owns) through the owner's swarm, the root one more node there."""
        if layer.root_id == layer.owner_id:
            self.fetch_from_origin(layer, now)
            return
        root, owner = self.index[layer.root_id], self.index[layer.owner_id] - self.config.nodes
        owned = self.layers[self.copy_of[(owner, layer.image_layer)]]
        self.planners[root][owned.index] = planner = self.new_planner(owned)
        self.agent_does(root, owned.index, planner.start(now), now)

    def root_stored(self, root: int, layer: SimLayer, now: float) -> None:
        """A tier's chunk landed at a root: its own group's copy has the leading run."""
        got = self.got[root][layer.index]
        mine = self.layers[self.copy_of[(root - self.config.nodes, layer.image_layer)]]
        held = mine.origin_chunks
        while held < mine.count and got[held]:
            held += 1
        if held > mine.origin_chunks:
            mine.origin_chunks = held
            actions = self.timed(mine, mine.schedule.origin_progress, held, now)
            self.deliver(mine.index, actions, now)

    def fetch_from_origin(self, layer: SimLayer, now: float) -> None:
        """The root's download of the layer's next chunk (one stream: no gap between)."""
        chunk = layer.origin_chunks
        if chunk < layer.count:
            root = self.index[layer.root_id]
            size = layer.chunk_bytes(chunk)
            flow = _Flow(self.origin, root, layer.index, chunk, size)
            self.flows[(root, layer.index, chunk, self.origin)] = flow
            self.start(flow, now)
