"""How a serving process stops: wait for SIGTERM or SIGINT, then drain its HTTP servers.

The agent and the webhook stop the same way, so the steps live here once. The caller opens
the signal receiver itself (``trio.open_signal_receiver(*STOP_SIGNALS, ...)``) as early as it
needs -- from the moment it is open, those signals no longer kill the process -- and then:

1. `wait_for_stop` returns at the first stop signal; SIGHUP, when the caller asked for it,
   runs its hangup action instead (the agent reopens its audit log for logrotate);
2. the caller marks itself not ready (``/readyz`` answers 503, load balancers move away);
3. `drain` stops every server accepting and lets requests in flight finish, all at once,
   within one grace period (``shutdownGrace``), however many servers there are;
4. the caller cancels what is left.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable

import trio

from agent.http.server import HttpServer

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def wait_for_stop(
    signals: AsyncIterable[int], *, on_hangup: Callable[[], Awaitable[None]] | None = None
) -> int:
    """The number of the first stop signal from `signals`; each SIGHUP before it runs
    `on_hangup` when one is given (without one, SIGHUP stops like the others)."""
    async for signum in signals:
        if signum == signal.SIGHUP and on_hangup is not None:
            await on_hangup()
            continue
        log.info("received %s: draining", signal.Signals(signum).name)
        return signum
    raise RuntimeError("the signal receiver closed before a stop signal")


async def drain(servers: Iterable[HttpServer], grace: float) -> None:
    """Drain every server concurrently; returns within `grace` seconds."""
    with trio.move_on_after(grace):
        async with trio.open_nursery() as drains:
            for server in servers:
                drains.start_soon(server.drain, grace)
