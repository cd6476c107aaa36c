"""Which root schedules a layer, without I/O: rendezvous order, and a busy root's handoffs.

Theory of operation
-------------------
**Rendezvous** (:func:`rendezvous_order`): every node sorts the roots by
``xxh3_64(f"{digest}|{root}")``, highest first; the owner of a layer is the first root in that
order the asker believes alive. No coordination, each root owns about 1/R of the layers, and a
dead root's layers each move to the next root in their own order.

**Handoffs** (:class:`Handoffs`): rendezvous spreads layers over roots only on average. An image's
few big layers land on one root often (two layers, two roots: one time in two), and that root's
own link then carries every one of them in from the origin and out to the swarm once, while the
other root idles: at the netns bench that alone costs 1.36 x T_min where one layer per root
gives 1.22 (`bench/swarm.py` prints both). So a root asked about a new layer while it still
fetches another big one from the origin *hands the new layer off* to the next root in the
layer's order (as this root sees it): it answers "ask that root" (`Plan.handoff`), remembers
that it did, and gives every later asker the same answer, so the cluster still fetches the
layer once. The agent asks the named root again with ``handed=1`` (`PlanTarget.handed`), which
that root always takes (no chain of handoffs). An agent that cannot ask the named root (not in
its roots, or benched) asks this root again with ``handed=1``, and this root takes the layer
itself: correctness never depends on the handoff.

A root hands a layer off only when that costs the origin nothing: not one it holds or fetches
already (cached, preheated, a pull of its own client's), and only while it fetches another
layer of at least HANDOFF_MIN_CHUNKS chunks itself (a config blob of 400 bytes is no load). The
decision is this root's alone and made once per layer; the record lives a week after the last
asker (the next root still holds the layer when a later pull comes), at most MAX_HANDOFFS
layers, and across restarts of this root (`agent.swarm.handoffstore` keeps them on disk).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import xxhash

from agent.core.values import parse_json_object
from agent.swarm.protocol import P2PError, check_digest, parse_node

HANDOFF_MIN_CHUNKS = 2  # a layer this big being fetched from the origin makes its root busy
MAX_HANDOFFS = 16384  # layers a root remembers having handed off (~250 bytes each)
# A record outlives the pull: the next root keeps the layer in its cache, and a later pull that
# asked this root would have it fetch the layer from the origin again. A stale record costs a
# redirect at most (the next root fetches what it no longer holds, as this one would have).
FORGET_AFTER = 7 * 24 * 3600.0


def rendezvous_score(digest: str, root: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{digest}|{root}".encode())


def rendezvous_order(digest: str, roots: Sequence[str]) -> list[str]:
    """The roots in preference order for a layer: highest ``xxh3_64(f"{digest}|{root}")``
    first, ties broken by name; duplicates are dropped.

    The ownership rule: **the owner of a layer is the first root in this order that the asker
    believes alive** (unless it hands the layer off: :class:`Handoffs`).  Every node computes
    it alone, from the roots' addresses exactly as configured (so every node must spell them
    the same way).  Each root owns about 1/R of the layers; when a root dies or is removed only
    the layers it owned move, each to the next root in its own order, spreading that root's
    load over the others.
    """
    return sorted(set(roots), key=lambda root: (-rendezvous_score(digest, root), root))


def placement(layers: Sequence[tuple[str, int]], roots: Sequence[str]) -> list[str]:
    """The root each of an image's layers lands on when they are all asked for at once, in
    this order (`layers`: digest and chunk count): the first root of its rendezvous order,
    unless that root fetches a big layer of these already, then the next one (which takes it
    whatever its own load: one handoff, as `Handoffs.decide`). For the simulator and the
    benches, which lay out a pull before it runs."""
    fetching: dict[str, list[Fetching]] = {}
    out = []
    for digest, chunks in layers:
        order = rendezvous_order(digest, roots)
        first = order[0]
        busy = busy_with(fetching.get(first, []), digest) is not None
        root = order[1] if busy and may_hand_off(first, order, held=False) else first
        fetching.setdefault(root, []).append(Fetching(digest, chunks))
        out.append(root)
    return out


@dataclass(frozen=True, slots=True)
class Fetching:
    """A layer a root fetches from the origin now, as a handoff decision weighs it."""

    digest: str
    chunks: int | None  # None while the origin has not told its size


def may_hand_off(me: str, order: Sequence[str], *, held: bool) -> bool:
    """Whether root `me` may hand a layer off at all: it comes first in the layer's `order`
    (an asker that came here on a failover finds the next root busy or gone already), a next
    root exists, and handing off costs the origin nothing (this node does not hold or fetch
    the layer already: `held`)."""
    return not held and len(order) >= 2 and order[0] == me


def busy_with(fetching: Sequence[Fetching], digest: str) -> str | None:
    """The other layer that keeps this root's link busy (its digest), if any: one it fetches
    from the origin with at least HANDOFF_MIN_CHUNKS chunks."""
    for layer in fetching:
        if layer.digest != digest and (layer.chunks or 0) >= HANDOFF_MIN_CHUNKS:
            return layer.digest
    return None


@dataclass
class Handoffs:
    """The layers this root handed off, and to whom: every asker gets the same answer."""

    forget_after: float = FORGET_AFTER
    limit: int = MAX_HANDOFFS
    _to: dict[str, tuple[str, float]] = field(default_factory=dict)  # digest -> (root, last)

    def target(self, digest: str, now: float) -> str | None:
        """The root `digest` was handed to, if it was (and the record is refreshed)."""
        record = self._to.get(digest)
        if record is None:
            return None
        if now - record[1] > self.forget_after:
            del self._to[digest]
            return None
        self._to[digest] = (record[0], now)
        return record[0]

    def decide(
        self,
        digest: str,
        *,
        me: str,
        order: Sequence[str],
        held: bool,
        fetching: Sequence[Fetching],
        now: float,
    ) -> str | None:
        """Whether this root (`me`) hands the new layer `digest` off, and to which root.

        `order`: the live roots in the layer's rendezvous order as this root sees them; `held`:
        this node holds or fetches the layer already; `fetching`: the layers it fetches from
        the origin now. Hands off only when it may (`may_hand_off`) and another big layer is
        on its way in (`busy_with`). A handoff is recorded; the oldest record goes when `limit`
        is reached."""
        if not may_hand_off(me, order, held=held) or busy_with(fetching, digest) is None:
            return None
        while len(self._to) >= self.limit:
            del self._to[next(iter(self._to))]
        self._to[digest] = (order[1], now)
        return order[1]

    def __len__(self) -> int:
        return len(self._to)

    def state(self) -> dict[str, str]:
        """digest -> root, for the status page."""
        return {digest: root for digest, (root, _) in self._to.items()}

    def dump(self) -> bytes:
        """The records as a file keeps them (`restore` reads them back), oldest first."""
        return json.dumps(self.state(), separators=(",", ":")).encode()

    def restore(self, data: bytes, now: float) -> int:
        """Records an earlier run of this root wrote (`dump`), each as if asked `now`: a
        restarted root still sends pulls where its layers went. Raises ValueError, naming what
        is wrong, for anything but such a file; returns how many records it holds now."""
        records = parse_json_object(data, "the handoff records")
        checked = {}
        for digest, root in records.items():
            try:
                checked[check_digest(digest)] = parse_node(root)
            except P2PError as exc:
                raise ValueError(exc.message) from None
        for digest, root in list(checked.items())[-self.limit :]:
            self._to.pop(digest, None)
            self._to[digest] = (root, now)
        while len(self._to) > self.limit:
            del self._to[next(iter(self._to))]
        return len(self._to)
