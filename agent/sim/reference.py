"""The original's published table (../shared/SPEC.md) as simulation settings.

Its test: 1000 nodes (4 cores, 8 GB, ESSD PL1 200 GB disks), agents limited to 1 core, 1 GB
and a 4 GB cache, 10 Gbit/s links; P95 time until every node has pulled *and unpacked* the
image, and the origin's (object storage bucket's) peak throughput. Pure data and arithmetic.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

NODES = 1000
NODE_GBIT = 10.0
# The bucket is not the bottleneck in the published runs (peaks of 1.2-6.7 Gbit/s): give the
# origin the same 10 Gbit/s as a node.
ORIGIN_GBIT = 10.0
DISK_MBPS = 220.0  # ESSD PL1 200 GB: 120 + 0.5 x 200 MB/s of throughput
LAYERS_AT_ONCE = 3  # containerd's max_concurrent_downloads
# A swarm agent's CPU per GiB received, serving included, in the chunks of SETTING below
# (bench/swarm.py --nodes 8 --node-mbit 200 --origin-mbit 400 --layer-mib 256 --chunk 16MiB
# --o-direct --client light --warm, this machine: 2.0-2.6, 4 MiB chunks 2.4-2.8; it was 5.4
# before the lean data plane): with one core it caps a node at about 490 MB/s, above the
# disks' 220.
AGENT_CPU_S_PER_GIB = 2.2
# Unpacking is not simulated: containerd gunzips and writes each layer after it arrives, on
# about one core; 150 MB/s is a fair figure for Go's gzip plus the writes.
UNPACK_MBPS = 150.0


@dataclass(frozen=True, kw_only=True)
class PublishedRow:
    image: str  # as `--image` takes it
    label: str  # as published
    p95_s: float
    origin_peak_gbit: float

    def unpack_s(self, layers: tuple[int, ...]) -> float:
        """What unpacking the whole image would add after the last byte arrived, at
        UNPACK_MBPS (an upper bound: layers that arrive early unpack meanwhile)."""
        return sum(layers) / (UNPACK_MBPS * 1e6)


# What `pollen simulate --reference` sets, for the flags left at their defaults: the published
# test, and a deployment fit for it (16 MiB chunks: a quarter of the plan requests of 4 MiB,
# each still about 75 ms at a node's 220 MB/s disk; 16 roots in tiers, 1.6% of the nodes:
# a root answers its group of ~62 agents and the other roots, not all 1000 agents).
SETTING = {
    "nodes": NODES,
    "node_gbit": NODE_GBIT,
    "origin_gbit": ORIGIN_GBIT,
    "disk_mbps": DISK_MBPS,
    "cache": "4GiB",
    "agent_cpu_s_per_gib": AGENT_CPU_S_PER_GIB,
    "chunk": "16MiB",
    "roots": 16,
    "tiers": True,
}

# "512 MB" in the table is taken as 512 MiB, "10 GB" as 10 GiB (image tools count in binary).
PUBLISHED = (
    PublishedRow(image="8x512MiB", label="512 MB x 8 layers", p95_s=116, origin_peak_gbit=2.0),
    PublishedRow(image="1x10GiB", label="10 GB x 1", p95_s=380, origin_peak_gbit=1.2),
    PublishedRow(image="5x4GiB", label="4 GB x 5", p95_s=555, origin_peak_gbit=5.1),
    PublishedRow(image="2x10GiB", label="10 GB x 2", p95_s=590, origin_peak_gbit=6.7),
    PublishedRow(image="40x512MiB", label="512 MB x 40", p95_s=475, origin_peak_gbit=3.8),
    PublishedRow(image="1x20GiB", label="20 GB x 1", p95_s=660, origin_peak_gbit=2.5),
    PublishedRow(image="10x2GiB", label="2 GB x 10", p95_s=493, origin_peak_gbit=3.2),
)


def header(args: argparse.Namespace) -> str:
    """What the rows below assume, in words."""
    return (
        f"The original's published table beside `pollen simulate`: {args.nodes} nodes, "
        f"{args.node_gbit:g} Gbit/s links, origin {args.origin_gbit:g} Gbit/s, disks "
        f"{args.disk_mbps:g} MB/s, one core per agent at {args.agent_cpu_s_per_gib:g} CPU-s/GiB, "
        f"cache {args.cache}, {args.roots} root(s) at {args.root_request_ms:g} ms per plan "
        f"request, {args.layers_at_once or 'all'} layers at once, chunk {args.chunk}"
        + (
            f", layers in stripes of {args.stripe_chunks} chunks each on its own root (a "
            "design under study)"
            if getattr(args, "stripe_chunks", None)
            else ""
        )
        + (
            ", roots in tiers (each node's plan requests to its group's root, each root "
            "fetching through the layer's owner among the roots)"
            if getattr(args, "tiers", False)
            else ""
        )
        + ".\n"
        f"Published P95s include unpacking; simulated ones end at the last byte: unpacking at "
        f"{UNPACK_MBPS:g} MB/s (one core, gzip) would add at most the figure in brackets."
    )
