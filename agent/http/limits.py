"""A port's limits on connections and responses, and who gives way when one is reached.

Theory of operation. A port holds at most `max_connections` connections, at most
`max_client_connections` of them from one client address, and sends at most `max_responses`
bodies at once, at most half of them to one address. A body being sent holds a chunk buffer
(or a manifest) until the kernel has taken its last byte, so the response limit times the
chunk size bounds what a port's clients can make the agent hold, however many connect. When a
limit is reached someone waits or gives way:

- a connection over the port's limit reclaims the one that has waited longest for a request
  head (an idle keep-alive, a client that never sent a byte, one trickling its head), else
  one whose send has made no progress for STALL_GRACE (its client stopped reading); if
  there is none, accepting waits (the listen backlog holds the newcomer);
- a connection over its address's limit reclaims that address's longest-waiting connection,
  or is closed at once;
- a body over a limit waits its turn; a freed slot goes to the waiting address that holds
  the fewest (one address flooding the port cannot starve another), and a waiter reclaims
  the send stalled longest beyond STALL_GRACE.

The choices are pure functions over `Standing` records (tested without sockets);
`PortLimits` holds the records, the cancel scopes and the trio waiting.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

STALL_GRACE = 2.0  # s without send progress before a response may be reclaimed
RECHECK = 0.25  # s between looks for something to reclaim while waiting at a limit


@dataclass
class Standing:
    """One connection as the limits see it."""

    conn_id: int
    client: str
    waiting_since: float | None = None  # waiting for a request head since
    stalled_since: float | None = None  # in a send that has not returned since
    going: bool = False  # reclaimed: its task is ending


def longest_waiting(conns: Iterable[Standing], *, client: str | None = None) -> Standing | None:
    """The connection (of `client`, if given) that has waited longest for a request head."""
    waiting = [
        c
        for c in conns
        if not c.going and c.waiting_since is not None and (client is None or c.client == client)
    ]
    return min(waiting, key=lambda c: c.waiting_since or 0.0, default=None)


def longest_stalled(conns: Iterable[Standing], now: float, grace: float) -> Standing | None:
    """The connection whose send has made no progress longest, if at least `grace`."""
    stalled = [
        c
        for c in conns
        if not c.going and c.stalled_since is not None and now - c.stalled_since >= grace
    ]
    return min(stalled, key=lambda c: c.stalled_since or 0.0, default=None)


def next_turn(waiting: Mapping[str, int], held: Mapping[str, int], per_client: int) -> str | None:
    """The address whose first waiter gets a free response slot: among addresses under their
    own cap, the one holding the fewest slots (ties: the one with the most waiters)."""
    eligible = [a for a, n in waiting.items() if n > 0 and held.get(a, 0) < per_client]
    if not eligible:
        return None
    return min(eligible, key=lambda a: (held.get(a, 0), -waiting[a]))


@dataclass(frozen=True, kw_only=True)
class Limits:
    """A port's limits; 0 means none."""

    max_connections: int = 0
    max_client_connections: int = 0
    max_responses: int = 0

    @property
    def max_client_responses(self) -> int:
        return max(1, self.max_responses // 2) if self.max_responses else 0


class PortLimits:
    """The trio side: registers connections, reclaims, and hands out response slots."""

    def __init__(
        self, limits: Limits, *, name: str, on_limit: Callable[[str], None] | None = None
    ) -> None:
        self.limits = limits
        self._name = name
        self._on_limit = on_limit
        self._conns: dict[int, Standing] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._changed = trio.Event()
        self._held: Counter[str] = Counter()  # response slots per address
        self._waiters: dict[str, deque[trio.Event]] = {}
        self.hits: Counter[str] = Counter()

    def statistics(self) -> dict[str, object]:
        return {
            "connections": len(self._conns),
            "responses": sum(self._held.values()),
            "waiting_for_response": sum(len(q) for q in self._waiters.values()),
            "limit_hits": dict(self.hits),
        }

    def hit(self, limit: str) -> None:
        """Count limit `limit` reached (also those the connection itself enforces)."""
        self.hits[limit] += 1
        if self._on_limit is not None:
            self._on_limit(limit)

    def _reclaim(self, conn: Standing, reason: str) -> None:
        log.info(
            "%s: conn %d from %s reclaimed (%s)", self._name, conn.conn_id, conn.client, reason
        )
        conn.going = True
        self.hit(reason)
        scope = self._scopes.get(conn.conn_id)
        if scope is not None:
            scope.cancel()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- connections ------------------------------------------------------------------------

    def _counted(self) -> int:
        return sum(1 for c in self._conns.values() if not c.going)

    async def room(self, pending: Callable[[], Awaitable[None]]) -> None:
        """Return once the port may take one more connection. At the limit, wait for one to
        be `pending` (in the listen backlog), then reclaim one for it if any may give way."""
        limit = self.limits.max_connections
        if not limit:
            return
        told = False
        while self._counted() >= limit:
            with trio.move_on_after(RECHECK):
                await pending()
            if self._counted() < limit:
                return
            victim = longest_waiting(self._conns.values())
            if victim is not None:
                self._reclaim(victim, "idle_reclaimed")
                continue
            victim = longest_stalled(self._conns.values(), trio.current_time(), STALL_GRACE)
            if victim is not None:
                self._reclaim(victim, "stalled_reclaimed")
                continue
            if not told:
                told = True
                self.hit("connections")
                log.warning("%s: %d connections, the limit; accepting waits", self._name, limit)
            with trio.move_on_after(RECHECK):
                await self._changed.wait()

    def open(self, conn_id: int, client: str, scope: trio.CancelScope) -> bool:
        """Register a new connection; False when its address is over its limit (close it)."""
        per_client = self.limits.max_client_connections
        if per_client:
            mine = sum(1 for c in self._conns.values() if c.client == client and not c.going)
            if mine >= per_client:
                victim = longest_waiting(self._conns.values(), client=client)
                if victim is None:
                    self.hit("client_connections")
                    log.info("%s: %s holds %d connections, the limit", self._name, client, mine)
                    return False
                self._reclaim(victim, "idle_reclaimed")
        self._conns[conn_id] = Standing(conn_id, client)
        self._scopes[conn_id] = scope
        return True

    def close(self, conn_id: int) -> None:
        self._conns.pop(conn_id, None)
        self._scopes.pop(conn_id, None)
        self._wake()

    def waiting(self, conn_id: int, waiting: bool) -> None:
        """The connection waits for a request head (or stopped waiting: a head came)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.waiting_since = trio.current_time() if waiting else None

    def sending(self, conn_id: int, sending: bool) -> None:
        """The connection is in a send (or the send returned: progress)."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.stalled_since = trio.current_time() if sending else None

    # -- responses --------------------------------------------------------------------------

    @asynccontextmanager
    async def response(self, conn_id: int, client: str) -> AsyncIterator[None]:
        """Hold a response slot while a body is sent."""
        if not self.limits.max_responses:
            yield
            return
        await self._take_slot(client)
        try:
            yield
        finally:
            self._held[client] -= 1
            if self._held[client] <= 0:
                del self._held[client]
            self._hand_on()

    def _free_slots(self) -> int:
        return self.limits.max_responses - sum(self._held.values())

    def _may_take(self, client: str) -> bool:
        return self._free_slots() > 0 and self._held[client] < self.limits.max_client_responses

    async def _take_slot(self, client: str) -> None:
        if self._may_take(client) and not any(self._waiters.values()):
            self._held[client] += 1
            return
        self.hit("responses")
        turn = trio.Event()
        queue = self._waiters.setdefault(client, deque())
        queue.append(turn)
        try:
            while not turn.is_set():
                victim = longest_stalled(self._conns.values(), trio.current_time(), STALL_GRACE)
                if victim is not None:
                    self._reclaim(victim, "stalled_reclaimed")
                with trio.move_on_after(RECHECK):
                    await turn.wait()
                self._hand_on()
        except BaseException:
            if turn.is_set():  # handed a slot just as we were cancelled: pass it on
                self._held[client] -= 1
                if self._held[client] <= 0:
                    del self._held[client]
                self._hand_on()
            raise
        finally:
            if turn in queue:
                queue.remove(turn)
            if not queue and self._waiters.get(client) is queue:
                del self._waiters[client]

    def _hand_on(self) -> None:
        """Give free slots to waiters, fairest first."""
        while self._free_slots() > 0:
            waiting = {a: len(q) for a, q in self._waiters.items()}
            address = next_turn(waiting, self._held, self.limits.max_client_responses)
            if address is None:
                return
            turn = self._waiters[address].popleft()
            if not self._waiters[address]:
                del self._waiters[address]
            self._held[address] += 1
            turn.set()
