"""The reports an agent's planner owes the root of a layer: transfers done, failed, missing
(the source answered 404) and finishing (in their last bytes). Pure, no I/O.

They wait here until a plan request carries them (at most MAX_REPORTS each), oldest kinds
first, and go again, first, when a request is not answered. A `finishing` stands for the
transfer's `done` (the root counts its receiver as a holder from then), so a failure after it
must reach the root after it: a `failed` whose transfer's `finishing` is in a request not yet
answered is held back until it is (two requests in flight may arrive in either order, and a
`finishing` that overtook its `failed` left the root a holding nothing took back); one whose
`finishing` has not gone yet replaces it.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from typing import TypeVar

from agent.swarm.protocol import MAX_REPORTS, PlanTarget

Done = tuple[tuple[int, str], ...]  # (chunk, source) reports
Failed = tuple[tuple[int, str, bool], ...]  # (chunk, source, bad data) reports
Report = TypeVar("Report", tuple[int, str], tuple[int, str, bool])


@dataclass(eq=False)
class Reports:
    done: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str, bool]] = field(default_factory=list)
    missing: list[tuple[int, str]] = field(default_factory=list)
    finishing: list[tuple[int, str]] = field(default_factory=list)
    # Transfers whose `finishing` went in a request not answered yet, and the `failed`
    # reports of theirs held back until it is.
    unconfirmed: set[tuple[int, str]] = field(default_factory=set)
    held_back: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        return bool(self.done or self.failed or self.missing or self.finishing)

    def take(self) -> tuple[Done, Failed, Done, Done]:
        """The reports for the next request, oldest kinds first, at most MAX_REPORTS in all."""
        done = _take(self.done, MAX_REPORTS)
        failed = _take(self.failed, MAX_REPORTS - len(done))
        lost = _take(self.missing, MAX_REPORTS - len(done) - len(failed))
        ending = _take(self.finishing, MAX_REPORTS - len(done) - len(failed) - len(lost))
        self.unconfirmed.update(ending)
        return done, failed, lost, ending

    def failure(self, chunk: int, source: str, *, bad_data: bool) -> None:
        """A `failed` report, after the `finishing` of the same transfer if one went."""
        transfer = (chunk, source)
        if transfer in self.finishing:  # not sent yet: the root needs neither
            self.finishing.remove(transfer)
        report = (chunk, source, bad_data)
        (self.held_back if transfer in self.unconfirmed else self.failed).append(report)

    def ended(self, request: PlanTarget) -> None:
        """`request` was answered, or will never be: its `finishing` reports are settled."""
        if not request.finishing:
            return
        self.unconfirmed.difference_update(request.finishing)
        if self.held_back:  # the root has taken their `finishing` (or never will)
            self.failed += [r for r in self.held_back if r[:2] not in self.unconfirmed]
            self.held_back = [r for r in self.held_back if r[:2] in self.unconfirmed]

    def again(
        self,
        request: PlanTarget,
        *,
        tailing: Set[tuple[int, str]],
        vouched: dict[int, str],
        held: Set[int],
    ) -> None:
        """`request` was not answered: its reports go again, first, to whichever root owns
        the layer now. A `finishing` goes again while its transfer is in its last bytes or
        its chunk on the way to the disk, and as the `done` it stands for once stored."""
        self.done[:0] = list(request.done)
        self.failed[:0] = list(request.failed)
        self.missing[:0] = list(request.missing)
        again = []
        for report in request.finishing:
            if report in tailing or vouched.get(report[0]) == report[1]:
                again.append(report)
            elif report[0] in held:
                self.done.append(report)
        self.finishing[:0] = again


def _take(queue: list[Report], room: int) -> tuple[Report, ...]:
    """The first `room` entries of `queue`, removed from it."""
    taken = tuple(queue[:room])
    del queue[: len(taken)]
    return taken
