"""What a root does with one plan request: its reports, then its demand, fed to the layer's
schedule in one order. Pure, no I/O.

The tracker (agent/swarm/tracker.py) and the simulated roots (agent/sim/roots.py) both feed
requests through `take_request`, so the simulation runs the rules the agents meet. When each
kept its own copy, the simulator's dropped the `missing` reports and the readers' `past`: its
root went on counting an evicted copy as a source, and 20 of 1000 simulated nodes never
finished a layer bigger than their cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.swarm.protocol import PlanTarget
from agent.swarm.schedule import Actions, LayerSchedule


@dataclass(frozen=True, slots=True)
class Fed:
    """The schedule's answer to one part of a request; `failed`: the part was this failure
    report (chunk, source, bad data). A source failing for other reasons than bad data
    (timeout, refused) may be gone: the caller may look before the next part is fed."""

    actions: Actions
    failed: tuple[int, str, bool] | None = None


def take_request(
    schedule: LayerSchedule, asker: str, request: PlanTarget, now: float
) -> Iterator[Fed]:
    """Feed `request` from `asker` to `schedule`: a fresh start forgets what the schedule knew
    of the asker, then transfers done, failed, missing (evicted at the source: no fault, just
    not a holder), finishing (last bytes: both links take their next), and last the demand
    with the holdings and `past`. Lazily, one part per step: the caller delivers each answer
    (and may forget a failing source) before the next part goes in."""
    if request.fresh:  # a new download there: what we knew of the node is from before
        yield Fed(schedule.leave(asker, now))
    for chunk, source in request.done:
        yield Fed(schedule.completed(asker, chunk, source, now))
    for report in request.failed:
        chunk, source, bad = report
        yield Fed(schedule.failed(asker, chunk, source, bad_data=bad, now=now), failed=report)
    for chunk, source in request.missing:
        yield Fed(schedule.missing(asker, chunk, source, now))
    for chunk, source in request.finishing:
        yield Fed(schedule.finishing(asker, chunk, source, now))
    yield Fed(
        schedule.request(
            asker,
            have=request.have,
            want=request.want,
            now=now,
            past=request.past,
            depth=request.depth,
        )
    )
