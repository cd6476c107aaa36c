"""How many transfers an agent keeps in flight for one layer: its pipeline's depth. Pure.

Theory of operation
-------------------
A node's next transfer starts some round trips after its current one says `finishing` (the
report to the root, the assignment back, the chunk request to the source). Where a chunk
crosses the link in more time than that (100 Mbit/s: 335 ms per 4 MiB), one transfer at a time
keeps the link busy, and the schedule's rule of one transfer per link holds (transfers sharing
a link each run slower, and every hop of a chunk takes longer). Where it does not (10 Gbit/s:
3.4 ms per 4 MiB; a plan round trip is a millisecond or more), one transfer at a time leaves the
link idle most of the time: a simulated 100-node swarm at 10 ms per hop took 6.7 x T_min. Then
the node keeps as many transfers in flight as DEPTH_RTTS round trips take at its link's rate,
so the round trips pass behind the others (the same swarm: 1.9 x T_min).

The link's time per chunk (`alone`) is measured from the node's own transfers: a transfer that
took `took` s beside others got its share of the link, `took` x its share of the time the
transfers in flight took together (less the round trip before its first byte). A source that
serves several at once stretches a transfer too, so the least of the recent samples is the
link's. The request tells the root the depth (`PlanTarget.depth`); the root lets the node
download that many at once, and upload that many once its uploads ran at the usual pace
(agent/swarm/schedule.py, "Depth, slots"). A root from before depth refuses the parameter:
the planner goes on at depth 1 with it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain

from agent.swarm.protocol import MAX_DEPTH, ROOT_WINDOW

# Round trips from one transfer's `finishing` to its successor's first byte, with margin:
# what the transfers in flight must cover (2 left 10 ms hops at 2.0 x T_min, 3 at 1.9).
DEPTH_RTTS = 3.0
SAMPLES = 8  # the link's time per chunk is the least of this many recent samples


@dataclass(eq=False)
class PipelineDepth:
    """The depth of one layer's pipeline on one node; `ended` after each transfer received."""

    limit: int = MAX_DEPTH
    value: int = 1
    alone: float | None = None  # s: a chunk alone on the link (None: not measured yet)
    _samples: list[float] = field(default_factory=list)
    _spans: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=2 * MAX_DEPTH))

    def ended(
        self,
        began: float,
        now: float,
        running: Iterable[float],
        rtt: float,
        ring: int | None,
        part: float = 1.0,
    ) -> int:
        """A transfer that ran from `began` to `now` arrived, beside the transfers that began
        at `running` and still run; `rtt`: the plan round trip; `ring`: the slots of the cache
        window the layer passes through (None: it is cached whole); `part`: its size over a
        whole chunk's (a layer's last chunk is short: 431 bytes took a round trip, and as a
        whole chunk's time it set a 200 Mbit/s node's depth to 16). Returns the new depth."""
        took = now - began
        if took <= 0 or part <= 0:
            return self.value
        others = chain(self._spans, ((b, now) for b in running))
        shared = sum(max(0.0, min(now, e) - max(began, b)) for b, e in others)
        self._spans.append((began, now))
        sample = max(took - rtt, took / 10) * took / (took + shared) / part
        self._samples = [*self._samples[1 - SAMPLES :], sample]
        alone = self.alone = min(self._samples)
        # A ring holds the root's window (the greater of 8 and twice the depth) and what is on
        # its way: deeper, chunks would come that no slot can take before the readers move on.
        deepest = self.limit if ring is None else min(self.limit, max(1, (ring - ROOT_WINDOW) // 2))
        if rtt < alone:  # a chunk outlasts a round trip: one at a time
            self.value = 1
        else:
            self.value = min(deepest, 1 + int(DEPTH_RTTS * rtt / alone))
        return self.value
