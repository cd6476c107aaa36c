"""What a simulated swarm is (its configuration), what it measured (its result), and the
arithmetic both need: the floor, percentiles, sizes and image specs. Pure, no I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.cache.chunks import ChunkLayout
from agent.swarm.ownership import placement, rendezvous_order
from agent.swarm.pace import expected_transfer
from agent.swarm.protocol import MAX_DEPTH, ROOT_WINDOW
from agent.swarm.schedule import LayerSchedule

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
Mbit = 1_000_000 / 8  # bytes per second in one Mbit/s
Gbit = 1000 * Mbit

# The root's CPU per plan request it answers (HTTP, signatures, JSON both ways, the tracker,
# the schedule), measured on a real root process by bench/rootload.py (one 128 MiB layer, 4 MiB
# chunks): 0.38 ms with 50 virtual agents, 0.42 with 100, 0.48 with 200. It grows with the
# cluster (longer scans in the schedule, more connections): 0.6 ms is taken for 1000. The
# schedule's own share is also timed in every simulation (`SwarmResult.schedule_cpu_s`).
ROOT_REQUEST_S = 0.0006

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1 << 40,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


def parse_size(text: str) -> int:
    """`512MiB`, `4GiB`, `10GB` (decimal), `4096`: bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (say e.g. 512MiB, 4GiB or 10GB)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


def parse_image(spec: str) -> tuple[int, ...]:
    """`8x512MiB` or `5x4GiB,2x10GiB` (a comma list of COUNTxSIZE; COUNTx may be left out):
    the layer sizes, in order."""
    layers: list[int] = []
    for part in spec.split(","):
        count, _, size = part.strip().rpartition("x")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"not COUNTxSIZE: {part!r} (say e.g. 8x512MiB)") from None
        if n < 1:
            raise ValueError(f"a layer count must be >= 1: {part!r}")
        layers.extend([parse_size(size)] * n)
    if not layers or min(layers) < 1:
        raise ValueError(f"an image needs layers of at least one byte: {spec!r}")
    return tuple(layers)


def t_min(*, file_size: int, origin: float, downloads: list[float], uploads: list[float]) -> float:
    """The Kumar-Ross floor max(F/u_o, F/d, N·F/(u_o + Σu)) for nodes with these download
    rates, and these upload rates (the nodes' and the roots')."""
    f, n = file_size, len(downloads)
    return max(f / origin, f / min(downloads), n * f / (origin + sum(uploads)))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q·n)): P95 of 16 nodes is the max."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def let_go(held: bytearray, consumed: int, excess: int, sending: Container[int]) -> list[int]:
    """A node's cache window making room: up to `excess` of the oldest chunks its readers
    consumed (below `consumed`) that it holds, cleared in `held`; none a peer is being sent
    (a ring slot is never reused while its chunk is sent, agent/fetch/window.py)."""
    gone: list[int] = []
    for chunk in range(consumed):
        if len(gone) >= excess:
            break
        if held[chunk] and chunk not in sending:
            held[chunk] = 0
            gone.append(chunk)
    return gone


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    """One simulated pull: N agents pull one image (its `layers`) at once through K roots.

    Rates are bytes/s. A node's download is capped by its link, its disk and its CPU (one core
    at `agent_cpu_s_per_gib`); `None` leaves a cap out."""

    nodes: int
    file_size: int = 0  # bytes: one layer of this size, unless `layers` is given
    layers: tuple[int, ...] = ()  # the image's layer sizes, in order
    chunk_size: int
    upload: float  # each node
    download: float  # each node's link
    origin: float  # the origin's upload, shared by the roots fetching from it
    roots: int = 1
    owners: tuple[int, ...] = ()  # each layer's root (an index); default: rendezvous order
    # A root fetching one big layer hands the next to the next root (`Handoffs`); False: each
    # layer on the first root of its rendezvous order, as before handoffs.
    handoffs: bool = True
    root_upload: float | None = None  # default: `upload`
    root_download: float | None = None  # a root's link from the origin; default: `download`
    disk: float | None = None  # a node's disk write rate
    agent_cpu_s_per_gib: float | None = None  # with one core, caps the node's receive rate
    root_request_s: float = 0.0  # a root's CPU per plan request: requests queue at its core
    layers_at_once: int | None = None  # an agent's layers in flight (containerd: 3); None: all
    # A design under study, not what agents do today: each layer's chunks in stripes of this
    # many, each stripe scheduled by the root its own rendezvous order picks (None: one root
    # per layer, as now).
    stripe_chunks: int | None = None
    # The size of a layer's head chunks (agent.cache.chunks): 0 by the agents' rule;
    # `chunk_size` cuts layers uniformly (`--uniform-chunks`, as before heads; stripes are).
    head_chunk: int = 0
    # Roots in tiers (`parentRoots`): every root is a group root, node i's group is root
    # i mod K, and a root fetches a layer it does not own (rendezvous over the roots) through
    # the owner's swarm, as one more node there; the owner alone goes to the origin.
    tiers: bool = False
    want: int = 2  # the planner's transfer slots: one, and a spare for a second source
    max_depth: int = MAX_DEPTH  # transfers a node keeps in flight at most (LayerPlanner.depth)
    window: int = ROOT_WINDOW
    upload_slots: int = 1
    root_upload_slots: int = 2  # as a root's tracker (agent/swarm/tracker.py)
    endgame: int = 2
    transfer_timeout: float = 10.0
    latency: float = 0.001  # s: a round trip (a plan request and its answer; a chunk request)
    store_delay: float = 0.0  # s from a chunk's last byte to its `stored` (hash, write)
    long_poll: float = 2.0  # s the root holds a standing request with nothing for it
    tick: float = 0.5  # s between the tracker's `expire` calls
    start_spread: float = 0.0  # node i joins at i * start_spread / nodes
    node_upload: Mapping[int, float] = field(default_factory=dict)  # per-node overrides
    node_download: Mapping[int, float] = field(default_factory=dict)
    liars: frozenset[int] = frozenset()
    leaves: Mapping[int, float] = field(default_factory=dict)  # node -> time it leaves
    # node -> time its process dies: nobody tells the roots (`leaves` models a node the roots
    # forget at once); they forget it `gone_after` seconds after its last plan request, as
    # the tracker does (GONE_AFTER).
    crashes: Mapping[int, float] = field(default_factory=dict)
    gone_after: float = 6.0
    # A root looks at the port of a source reported failing (agent/swarm/liveness.py) and
    # finds a crashed node's refusing; False: a port that still answers (restarted at once).
    refused: bool = True
    time_limit: float | None = None  # s; default 50 x T_min
    jitter: bool = True  # each latency is uniform in [latency/2, 3*latency/2] (breaks ties)
    seed: int = 0
    fair_sharing: bool = False  # max-min fair rates over all links (O(flows^2) per event)
    # TCP's climb: a transfer given a larger share (new, or a flow beside it ended) closes
    # 63 % of the gap in this many chunk times at its receiver's link (0: at once, the fluid
    # links). 0.3 reproduces the netns cluster (bench/swarm.py: 100 ms link queues, BBR):
    # P95 within 0.1 x T_min and the links' use while receiving, at 50-200 Mbit/s and 2-8 MiB
    # chunks (docs/ARCHITECTURE.md has the figures).
    ramp: float = 0.0
    # Chunks each node's cache holds at once (None: every layer whole). Readers consume chunks
    # in order as they arrive; the oldest consumed chunks are let go to make room.
    node_cache_chunks: int | None = None

    def __post_init__(self) -> None:
        if self.layers and self.file_size not in (0, sum(self.layers)):
            raise ValueError("give `layers` or `file_size`, or a file_size that is their sum")
        if not self.layers and self.file_size < 1:
            raise ValueError("an image needs at least one byte")
        if self.nodes < 1 or self.roots < 1 or self.chunk_size < 1:
            raise ValueError("nodes, roots and chunk_size must be >= 1")
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be in 1..{MAX_DEPTH}")
        if self.stripe_chunks is not None and self.stripe_chunks < 1:
            raise ValueError("stripe_chunks must be >= 1")
        if self.ramp < 0:
            raise ValueError("ramp must be >= 0")
        if not 0 <= self.head_chunk <= self.chunk_size:
            raise ValueError("head_chunk (--head-chunk) must be at most chunk_size (--chunk)")
        if self.owners and self.stripe_chunks is not None:
            raise ValueError("owners place whole layers: not with stripe_chunks")
        if self.tiers and self.stripe_chunks is not None:
            raise ValueError("tiers schedule whole layers: not with stripe_chunks")
        if self.owners and (
            len(self.owners) != len(self.layer_sizes)
            or not all(0 <= o < self.roots for o in self.owners)
        ):
            raise ValueError("owners: one root index (< roots) per layer")

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self.layers or (self.file_size,)

    @property
    def total_size(self) -> int:
        return sum(self.layer_sizes)

    @property
    def chunk_count(self) -> int:
        """Chunks of the whole image."""
        return sum(self.chunks_of(size) for size in self.layer_sizes)

    def chunks_of(self, size: int) -> int:
        return self.layout_of(size).count

    def layout_of(self, size: int) -> ChunkLayout:
        """A layer's chunks, as the agents and roots cut it."""
        return ChunkLayout(size=size, chunk_size=self.chunk_size, head_chunk=self.head)

    @property
    def head(self) -> int:
        """The head chunk size the agents use (0: the rule); a stripe is whole chunks."""
        return self.chunk_size if self.stripe_chunks is not None else self.head_chunk

    def upload_of(self, node: int) -> float:
        return self.node_upload.get(node, self.upload)

    def download_of(self, node: int) -> float:
        """A node's receive rate: its link, capped by its disk and its one core."""
        rate = self.node_download.get(node, self.download)
        if self.disk is not None:
            rate = min(rate, self.disk)
        if self.agent_cpu_s_per_gib:
            rate = min(rate, GiB / self.agent_cpu_s_per_gib)
        return rate

    @property
    def root_rate(self) -> float:
        return self.upload if self.root_upload is None else self.root_upload

    @property
    def stall_after(self) -> float:
        """Simulated seconds without a chunk stored anywhere (after the last node joined) that
        mean the swarm is stuck: the run fails then, not at `time_limit` (a stall ran 24
        simulated hours, half an hour of CPU). Ten transfer timeouts, or twenty chunks at the
        slowest rate in the setting."""
        rates = [self.origin, self.root_rate, self.root_download or self.download]
        rates += [min(self.upload_of(i), self.download_of(i)) for i in range(self.nodes)]
        return max(10 * self.transfer_timeout, 20 * self.chunk_size / min(rates))

    @property
    def t_min(self) -> float:
        return t_min(
            file_size=self.total_size,
            origin=self.origin,
            downloads=[self.download_of(i) for i in range(self.nodes)],
            uploads=[self.upload_of(i) for i in range(self.nodes)] + [self.root_rate] * self.roots,
        )


@dataclass(frozen=True, kw_only=True)
class SwarmResult:
    config: SwarmConfig
    completion: dict[str, float]  # node -> when it held every chunk (absent: left before that)
    t_min: float
    root_upload_bytes: int  # what the roots uploaded to agents
    origin_bytes: int  # what the origin sent the roots
    origin_peak: float  # bytes/s, the origin's highest rate over any second
    total_bytes: int  # every byte moved between nodes (roots included), aborted parts too
    uploaded: dict[str, int]  # bytes each node (and root) uploaded
    downloaded: dict[str, int]
    # The agents' bytes received over what their links could have moved while a transfer was
    # coming in (bench/transfers.py measures the same on the netns cluster).
    link_use: float
    # The share of its span (first transfer to last) an agent's download of a layer had no
    # transfer running: waits for an assignment, a round trip, a head (bench/transfers.py too).
    lane_idle: float
    # The share of its link's rate an agent used in each fifth of its pull (links.phase_use),
    # averaged over the agents: bench/transfers.py measures the same.
    phase_use: tuple[float, ...]
    transfers: int
    cancelled: int
    events: int
    requests: dict[str, int]  # plan requests each root answered
    schedule_cpu_s: dict[str, float]  # CPU the real schedules took, per root (this machine)

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
        """The roots' uploads over F (a single root in the striping ideal sends F)."""
        return self.root_upload_bytes / self.config.total_size

    @property
    def origin_over_f(self) -> float:
        return self.origin_bytes / self.config.total_size

    def root_cpu_s(self, request_s: float) -> dict[str, float]:
        """Each root's projected CPU: its plan requests at `request_s` each (HTTP, signing,
        JSON) plus the schedule's own CPU as measured in this run."""
        return {
            root: n * request_s + self.schedule_cpu_s.get(root, 0.0)
            for root, n in self.requests.items()
        }

    def summary(self) -> str:
        c = self.config
        return (
            f"N={c.nodes} F={c.total_size / MiB:.0f}MiB layers={len(c.layer_sizes)} "
            f"chunks={c.chunk_count} T_min={self.t_min:.2f}s "
            f"P50={self.p50:.2f}s P95={self.p95:.2f}s max={self.slowest:.2f}s "
            f"P95/T_min={self.p95_ratio:.3f} root/F={self.root_ratio:.3f} "
            f"origin/F={self.origin_over_f:.3f} link_use={self.link_use:.3f} "
            f"lane_idle={self.lane_idle:.3f} "
            f"by_fifth={'/'.join(f'{u:.2f}' for u in self.phase_use)} "
            f"total/(N*F)={self.total_bytes / (c.nodes * c.total_size):.3f} "
            f"transfers={self.transfers} cancelled={self.cancelled} events={self.events}"
        )

    def to_json(self, *, wall_s: float, request_s: float) -> dict[str, Any]:
        cpu = self.root_cpu_s(request_s)
        return {
            "nodes": self.config.nodes,
            "roots": self.config.roots,
            "layers": list(self.config.layer_sizes),
            "p50_s": round(self.p50, 3),
            "p95_s": round(self.p95, 3),
            "max_s": round(self.slowest, 3),
            "t_min_s": round(self.t_min, 3),
            "p95_over_t_min": round(self.p95_ratio, 3),
            "origin_bytes": self.origin_bytes,
            "origin_over_f": round(self.origin_over_f, 4),
            "origin_peak_gbit": round(self.origin_peak / Gbit, 3),
            "ramp": self.config.ramp,
            "link_use_while_receiving": round(self.link_use, 3),
            "lane_idle": round(self.lane_idle, 3),
            "link_use_by_fifth": [round(u, 3) for u in self.phase_use],
            "plan_requests": sum(self.requests.values()),
            "root_cpu_s_max": round(max(cpu.values(), default=0.0), 2),
            "transfers": self.transfers,
            "events": self.events,
            "wall_s": round(wall_s, 2),
        }


def bench_case(
    nodes: int = 16, link_mbit: float = 100, origin_mbit: float = 200, **overrides: Any
) -> SwarmConfig:
    """The swarm benchmark's setting as one layer (the simulator's own tests): 128 MiB in 4 MiB
    chunks, every node (and the root) with `link_mbit` up and down, the origin at
    `origin_mbit`."""
    base: dict[str, Any] = {
        "nodes": nodes,
        "file_size": 128 * MiB,
        "chunk_size": 4 * MiB,
        "upload": link_mbit * Mbit,
        "download": link_mbit * Mbit,
        "origin": origin_mbit * Mbit,
    }
    base.update(overrides)
    return SwarmConfig(**base)


class SimLayer:
    """One layer: its chunks, its owning root's schedule and what the origin has sent."""

    def __init__(
        self,
        index: int,
        size: int,
        config: SwarmConfig,
        roots: list[str],
        *,
        image_layer: int | None = None,
        stripes: int = 1,
        layer_size: int | None = None,
        group: int | None = None,
        owner: str | None = None,
    ) -> None:
        c = config
        self.index = index
        self.image_layer = index if image_layer is None else image_layer  # which real layer
        self.size = size
        self.layout = c.layout_of(size)
        self.lengths = self.layout.lengths()
        self.count = len(self.lengths)
        # With tiers the groups' copies of one layer are one blob: one digest, one table.
        name = self.image_layer if group is not None else index
        self.digest = f"sha256:{name:064x}"
        if c.owners:
            owner = roots[c.owners[self.image_layer]]
        elif owner is None:
            owner = rendezvous_order(self.digest, roots)[0]
        self.owner_id = owner  # the root that fetches it from the origin
        self.group = group  # tiers: the group whose root schedules this copy
        self.root_id = owner if group is None else roots[group]
        # A layer bigger than the cache passes through a window; a striped one's window is
        # shared by the stripes in flight, as many as leave each a window the schedule can
        # fill without a gap (its look-ahead plus the planner's slots): the rest wait.
        total = c.chunks_of(layer_size) if layer_size is not None else self.count
        cache = c.node_cache_chunks
        self.at_once = stripes  # stripes of this layer an agent fetches at once
        if cache is not None and total > cache:
            least = c.window + c.want + 2  # a smaller cache is taken as this (no deadlock)
            self.at_once = max(1, min(stripes, cache // least))
            cache = max(least, cache // self.at_once)
        else:
            cache = None
        self.hashes = {k: f"{name:08x}{k:056x}" for k in range(self.count)}
        self.origin_chunks = 0  # chunks the root holds
        self.fetching = False  # the root's download from the origin started
        self.window = cache if cache is not None and self.count > cache else None
        self.schedule = LayerSchedule(
            chunk_count=self.count,
            root=self.root_id,
            window=c.window,
            upload_slots=c.upload_slots,
            root_upload_slots=c.root_upload_slots,
            transfer_timeout=c.transfer_timeout,
            endgame=c.endgame,
            expected=expected_transfer(c.chunk_size),
            layout=self.layout,
        )

    def chunk_bytes(self, chunk: int) -> int:
        return self.lengths[chunk]

    def nominal(self, chunk: int) -> int:
        """The chunk's size in its layout, a short last chunk counted whole (TCP's climb
        takes `ramp` of these)."""
        return round(self.layout.scale(chunk) * self.layout.chunk_size)


def sim_layers(config: SwarmConfig, roots: list[str]) -> list[SimLayer]:
    """The image's layers as the roots schedule them: one per layer, (with `stripe_chunks`)
    one per stripe, or (with `tiers`) one per layer and group, each knowing its layer."""
    stripe = config.stripe_chunks
    layers: list[SimLayer] = []
    owners: list[str | None] = [None] * len(config.layer_sizes)
    if config.handoffs and stripe is None and not config.tiers:
        asked = [
            (f"sha256:{i:064x}", config.chunks_of(n)) for i, n in enumerate(config.layer_sizes)
        ]
        owners = list(placement(asked, roots))
    for i, size in enumerate(config.layer_sizes):
        if config.tiers:  # one copy per group, scheduled by the group's root
            for group in range(len(roots)):
                layers.append(
                    SimLayer(len(layers), size, config, roots, image_layer=i, group=group)
                )
            continue
        if stripe is None:
            layers.append(SimLayer(i, size, config, roots, owner=owners[i]))
            continue
        part = stripe * config.chunk_size
        sizes = [min(part, size - start) for start in range(0, size, part)]
        for piece in sizes:
            layers.append(
                SimLayer(
                    len(layers),
                    piece,
                    config,
                    roots,
                    image_layer=i,
                    stripes=len(sizes),
                    layer_size=size,
                )
            )
    return layers
