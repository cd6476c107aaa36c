"""The agents of a simulated swarm: each a real `LayerPlanner` per layer, whose decisions are
carried out as `agent.swarm.download` does (`Simulation` in `agent.sim.engine` takes these
methods, and owns the state they read). A node pulls `layers_at_once` layers at a time in
image order; a layer bigger than its cache passes through a window of it (`make_room`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.sim.links import Flow as _Flow
from agent.sim.model import SimLayer, SwarmConfig, let_go
from agent.sim.roots import EV_ARRIVE, EV_START, EV_STORE, EV_WAKE
from agent.swarm.planner import Decisions, LayerPlanner
from agent.swarm.protocol import PlanTarget


class NodeSide:
    """The agents' half of a `Simulation` (the attributes are the simulation's)."""

    config: SwarmConfig
    layers: list[SimLayer]
    names: list[str]
    ids: list[str]
    index: dict[str, int]
    planners: list[dict[int, LayerPlanner]]
    node_layers: list[list[int]]
    next_layer: list[int]
    flows: dict[tuple[int, int, int, int], _Flow]
    ups: list[set[_Flow]]
    held: list[list[bytearray]]
    got: list[list[bytearray]]
    held_n: list[list[int]]
    consumed: list[list[int]]
    layer_have: list[list[int]]
    have: list[int]
    stored: int
    progress_at: float
    completion: dict[str, float]
    unfinished: int
    total_chunks: int
    alive: list[bool]
    gone: list[bool]
    transfers: int
    cancelled: int
    wake_version: dict[tuple[int, int], int]
    held_poll: dict[tuple[int, int], PlanTarget]
    landing: set[tuple[int, int, int]]
    parked: dict[tuple[int, int, int], list[_Flow]]
    verified: set[tuple[int, int, int]]

    if TYPE_CHECKING:

        def push(self, t: float, kind: int, obj: object = None, version: int = 0) -> None: ...
        def delay(self, base: float) -> float: ...
        def stop(self, flow: _Flow, now: float) -> None: ...
        def finish(self, flow: _Flow, now: float) -> None: ...
        def cut(self, flow: _Flow, now: float) -> None: ...
        def root_stored(self, root: int, layer: SimLayer, now: float) -> None: ...

    def start_layers(self, node: int, now: float) -> None:
        """Start the node's next image layers, up to `layers_at_once` in flight, and of a
        striped layer as many stripes as its window allows (`SimLayer.at_once`)."""
        c = self.config
        limit = c.layers_at_once or len(c.layer_sizes)
        planners, order = self.planners[node], self.node_layers[node]
        while self.next_layer[node] < len(order):
            layer = self.layers[order[self.next_layer[node]]]
            active = [self.layers[i] for i in planners if not self.layer_complete(node, i)]
            images = {a.image_layer for a in active}
            if layer.image_layer not in images and len(images) >= limit:
                return
            if sum(1 for a in active if a.image_layer == layer.image_layer) >= layer.at_once:
                return
            self.next_layer[node] += 1
            planners[layer.index] = self.new_planner(layer)
            self.agent_does(node, layer.index, planners[layer.index].start(now), now)

    def new_planner(self, layer: SimLayer) -> LayerPlanner:
        c = self.config
        return LayerPlanner(
            digest=layer.digest,
            upstream="registry.sim",
            repo="sim/image",
            chunk_size=c.chunk_size,
            head_chunk=c.head,
            parallel=c.want,
            max_depth=c.max_depth,
        )

    def layer_complete(self, node: int, layer: int) -> bool:
        return self.layer_have[node][layer] == self.layers[layer].count

    def agent_does(self, node: int, layer: int, d: Decisions, now: float) -> None:
        """Carry out a planner's decisions, as `agent.swarm.download` does."""
        assert d.error is None and d.fallback is None, f"{self.names[node]}: {d}"
        planner = self.planners[node][layer]
        if d.size is not None:  # nothing cached before: the layer is admitted empty
            window = self.layers[layer].window if node < self.config.nodes else None
            self.agent_does(node, layer, planner.admitted((), now, window=window), now)
            return
        key = (node, layer)
        if d.drop_poll:
            self.held_poll.pop(key, None)
        for t in d.cancel:
            flow = self.flows.pop((node, layer, t.chunk, self.index[t.source]), None)
            if flow is not None:
                self.cancelled += 1
                self.stop(flow, now)
        for t in d.start:
            src = self.index[t.source]
            size = self.layers[layer].chunk_bytes(t.chunk)
            flow = _Flow(src, node, layer, t.chunk, size)
            flow.asked = now
            self.flows[(node, layer, t.chunk, src)] = flow
            self.transfers += 1
            self.push(now + self.delay(self.config.latency), EV_START, flow)
        for request in d.requests:
            message = (node, layer, request)
            self.push(now + self.delay(self.config.latency / 2), EV_ARRIVE, message)
        if d.store is not None:
            self.verified.add((node, layer, d.store.chunk))
            self.landed(node, layer, d.store.chunk, now)
            if self.config.store_delay > 0:  # hashed, written, then reported
                message = (node, layer, d.store.chunk, d.store.source)
                self.push(now + self.config.store_delay, EV_STORE, message)
            else:
                self.store(node, layer, d.store.chunk, d.store.source, now)
        if d.wake_at is not None:
            version = self.wake_version[key] = self.wake_version.get(key, 0) + 1
            self.push(d.wake_at, EV_WAKE, key, version)

    def store(self, node: int, layer: int, chunk: int, source: str, now: float) -> None:
        got = self.got[node][layer]
        self.progress_at = now
        if node >= self.config.nodes:  # a root, through the tier (roots hold whole layers)
            got[chunk] = self.held[node][layer][chunk] = 1
            planner = self.planners[node][layer]
            self.agent_does(node, layer, planner.stored(chunk, source, now), now)
            self.root_stored(node, self.layers[layer], now)
            return
        if not got[chunk]:
            got[chunk] = 1
            self.stored += 1
            self.have[node] += 1
            self.layer_have[node][layer] += 1
            if self.have[node] == self.total_chunks:
                self.completion[self.names[node]] = now
                self.unfinished -= 1
        if not self.held[node][layer][chunk]:
            self.held[node][layer][chunk] = 1
            self.held_n[node][layer] += 1
        planner = self.planners[node][layer]
        self.verified.discard((node, layer, chunk))
        self.agent_does(node, layer, planner.stored(chunk, source, now), now)
        if self.layers[layer].window is not None:
            self.make_room(node, layer, now)
        if self.layer_complete(node, layer):
            self.start_layers(node, now)

    def landed(self, node: int, layer: int, chunk: int, now: float) -> None:
        """The chunk is verified at `node`, or (not held) nothing brings it any more: the
        transfers relaying it from there end, or are cut."""
        key = (node, layer, chunk)
        self.landing.discard(key)
        for flow in self.parked.pop(key, ()):
            if self.flows.get((flow.dst, flow.layer, flow.chunk, flow.src)) is not flow:
                continue  # cancelled meanwhile
            if self.held[node][layer][chunk] or key in self.verified:
                self.finish(flow, now)
            else:
                self.cut(flow, now)

    def make_room(self, node: int, layer: int, now: float) -> None:
        """The node's readers consume in order; its cache lets the oldest consumed chunks go
        so that the next transfers fit (as the driver will, through `released`)."""
        c, got, held = self.config, self.got[node][layer], self.held[node][layer]
        count, window = self.layers[layer].count, self.layers[layer].window
        consumed = self.consumed[node]
        while consumed[layer] < count and got[consumed[layer]]:
            consumed[layer] += 1
        assert window is not None
        planner = self.planners[node][layer]
        excess = self.held_n[node][layer] + planner.depth + c.want - 1 - window
        sending = {f.chunk for f in self.ups[node] if f.layer == layer} if excess > 0 else ()
        gone = let_go(held, consumed[layer], excess, sending)
        self.held_n[node][layer] -= len(gone)
        decisions = planner.released(gone, consumed[layer], now)
        self.agent_does(node, layer, decisions, now)

    def leave(self, node: int, now: float) -> None:
        """The node is gone (the caller tells its roots, or not: a crash): its transfers end,
        those from it with a failure at their receivers."""
        self.alive[node] = False
        self.gone[node] = True
        for layer in range(len(self.layers)):
            self.held_poll.pop((node, layer), None)
        if self.have[node] < self.total_chunks:
            self.unfinished -= 1
        self.landing = {key for key in self.landing if key[0] != node}
        for key, flow in list(self.flows.items()):
            if node in (flow.src, flow.dst):
                del self.flows[key]
                self.stop(flow, now)
                if flow.dst != node and self.alive[flow.dst]:  # its source vanished
                    planner = self.planners[flow.dst][flow.layer]
                    decisions = planner.failed(flow.chunk, self.ids[node], now)
                    self.agent_does(flow.dst, flow.layer, decisions, now)
