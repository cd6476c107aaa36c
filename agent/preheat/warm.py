"""Asking each blob's owning root to fetch it, and following every one to its end.

The owner is the root an agent's pull will ask: the first in the blob's rendezvous order over
the node's ``roots`` (`agent.swarm.ownership.rendezvous_order`). A root that does not answer
is skipped for the rest of the preheat, its blobs going to the next root in their order --
where agents' pulls go while it is down -- and said so in a warning. Each blob has a task of
its own (at most `PARALLEL` at once) that repeats its preheat request, which the root holds
until the blob is complete or a couple of seconds passed, so a reply is also a progress
report. A task that outlives `timeout` fails its blob; the roots' downloads go on regardless.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import trio

from agent.preheat.images import PreheatError
from agent.preheat.manifests import BlobRef
from agent.preheat.progress import BlobState, PlainLog, frame
from agent.swarm.client import P2PClient, PeerError
from agent.swarm.ownership import rendezvous_order
from agent.swarm.preheat import PreheatTarget

PARALLEL = 16  # blobs asked about at once (each a connection to its root)
MIN_ASK_INTERVAL = 0.2  # s between two requests for a blob whose root answered at once
REDRAW_EVERY = 0.2  # s between two frames on a terminal


@dataclass(eq=False)
class Warmer:
    """The blobs of one preheat and the roots they go to."""

    client: P2PClient
    roots: Sequence[str]
    clock: Callable[[], float] = trio.current_time
    down: dict[str, str] = field(default_factory=dict)  # root -> why it is skipped
    warnings: list[str] = field(default_factory=list)

    async def warm(self, jobs: Sequence[tuple[BlobState, BlobRef]], timeout: float) -> None:
        """Preheat every blob; return when each is fetched, cached or failed."""
        limiter = trio.CapacityLimiter(PARALLEL)
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for state, blob in jobs:
                    nursery.start_soon(self._one, state, blob, limiter)
        for state, _ in jobs:
            if not state.finished:
                state.fail(f"not complete after {timeout:g} s (--timeout)", self.clock())

    @property
    def all_down(self) -> bool:
        return bool(self.roots) and all(root in self.down for root in self.roots)

    async def _one(self, state: BlobState, blob: BlobRef, limiter: trio.CapacityLimiter) -> None:
        target = PreheatTarget(
            digest=blob.descriptor.digest,
            upstream=blob.access.upstream.key,
            repo=blob.access.repo,
            size=blob.descriptor.size,
        )
        async with limiter:
            for root in rendezvous_order(target.digest, self.roots):
                if root in self.down:
                    continue
                try:
                    await self._follow(state, blob, target, root)
                    return
                except PeerError as exc:
                    self._skip(root, str(exc).removeprefix(f"{root}: "))
                except PreheatError as exc:  # a registry token that could not be renewed
                    state.fail(exc.message, self.clock())
                    return
        reasons = "; ".join(f"{root}: {why}" for root, why in self.down.items())
        state.fail(f"no root could take it ({reasons})", self.clock())

    async def _follow(
        self, state: BlobState, blob: BlobRef, target: PreheatTarget, root: str
    ) -> None:
        """Ask `root` about the blob until it is complete or failed."""
        while True:
            state.asking(root, self.clock())
            asked = self.clock()
            reply = await self.client.preheat(root, target, await blob.access.header())
            now = self.clock()
            if reply.error is not None:
                state.fail(f"{root} answered {reply.error_status}: {reply.error}", now)
                return
            state.answered(
                size=reply.size,
                stored=reply.stored,
                complete=reply.complete,
                cached=reply.cached,
                now=now,
            )
            if reply.complete:
                return
            if now - asked < MIN_ASK_INTERVAL:
                await trio.sleep(MIN_ASK_INTERVAL)

    def _skip(self, root: str, why: str) -> None:
        if root not in self.down:
            self.down[root] = why
            self.warnings.append(
                f"root {root} does not answer ({why}); its blobs go to the next root, "
                "as agents' pulls do while it is down"
            )


@dataclass(eq=False)
class Display:
    """Progress on `out` while a preheat runs: a redrawn frame on a terminal, else lines."""

    blobs: Sequence[BlobState]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: bool = False
    clock: Callable[[], float] = trio.current_time
    _drawn: int = field(default=0, init=False)  # lines of the last frame (redrawn over)
    _log: PlainLog = field(default_factory=PlainLog, init=False)
    _warned: int = field(default=0, init=False)  # warnings printed already

    def show(self, warnings: Sequence[str]) -> None:
        now = self.clock()
        if not self.tty:
            for warning in warnings[self._warned :]:
                print(f"warning: {warning}", file=self.out)
            self._warned = len(warnings)
            for line in self._log.lines(self.blobs, now):
                print(line, file=self.out)
            self.out.flush()
            return
        width = shutil.get_terminal_size().columns - 1
        lines = [f"warning: {w}" for w in warnings] + frame(self.blobs, now)
        text = f"\x1b[{self._drawn}F" if self._drawn else ""
        text += "".join(f"\x1b[2K{line[:width]}\n" for line in lines)
        self.out.write(text)
        self.out.flush()
        self._drawn = len(lines)

    async def run(self, warnings: Sequence[str]) -> None:
        """Show progress until cancelled."""
        while True:
            self.show(warnings)
            await trio.sleep(REDRAW_EVERY)
