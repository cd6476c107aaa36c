"""Plan requests answered once: a replayed one is refused, without I/O.

Theory of operation. A signed request is good for MAX_SKEW (±300 s) of clock difference, and
on a P2P port without TLS anyone on the path sees it. Chunk requests are idempotent reads, but
a plan request changes the root: ``fresh`` forgets what the node holds, ``failed`` benches a
source, ``want`` hands out transfers. Replayed, an old one would undo the node's newer state.
So each node's plan requests carry a nonce in their target (``n=``, under the signature), and
a root answers each signature once: per node it keeps the signatures of the last WINDOW
seconds (by their signed time) and refuses one seen before, or one signed more than WINDOW
before the newest request it has seen from that node (its signature may have been forgotten).
An honest request is never that late: it is signed the moment it is sent.

Memory is what the root answered in WINDOW seconds, over at most MAX_NODES nodes (least
recently heard from forgotten first: only cluster-token holders can name nodes at all).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.swarm.signing import HEADER_TIME

WINDOW = 30  # seconds of signatures kept per node
MAX_NODES = 65536


@dataclass
class _Seen:
    latest: int = 0
    order: deque[tuple[int, str]] = field(default_factory=deque)  # (signed time, signature)
    signatures: set[str] = field(default_factory=set)


class ReplayGuard:
    """Which plan requests a root has answered, per node, for the last WINDOW seconds."""

    def __init__(self, *, window: int = WINDOW, max_nodes: int = MAX_NODES) -> None:
        self.window = window
        self.max_nodes = max_nodes
        self._nodes: OrderedDict[str, _Seen] = OrderedDict()
        self.refused = 0

    def admit(self, node: str, signed_at: int, signature: str) -> str | None:
        """Record a verified request; the reason to refuse it, or None to answer it."""
        seen = self._nodes.get(node)
        if seen is None:
            seen = self._nodes[node] = _Seen(latest=signed_at)
            while len(self._nodes) > self.max_nodes:
                self._nodes.popitem(last=False)
        self._nodes.move_to_end(node)
        if signed_at < seen.latest - self.window:
            self.refused += 1
            return f"signed {seen.latest - signed_at} s before this node's latest request"
        if signature in seen.signatures:
            self.refused += 1
            return "replayed: this request was answered already"
        seen.latest = max(seen.latest, signed_at)
        seen.order.append((signed_at, signature))
        seen.signatures.add(signature)
        while seen.order and seen.order[0][0] < seen.latest - self.window:
            seen.signatures.discard(seen.order.popleft()[1])
        return None


def signed_time(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The x-pollen-time of a request `verify` accepted."""
    for name, value in headers:
        if bytes(name).lower() == HEADER_TIME:
            return int(bytes(value))
    raise ValueError("no x-pollen-time")
