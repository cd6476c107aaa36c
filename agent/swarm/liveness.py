"""Whether a node's P2P port still takes connections: a root's look at a source whose
transfers fail.

A node that dies is news to nobody: its uploads break at their receivers, who report them
failed, but the root learns that the node itself is gone only once it stopped asking
(`GONE_AFTER`, 6 s). Until then the root counts it as a holder of the chunks it said
`finishing` for, and its own downloads as running, each holding a source's upload slot
(the chaos bench's killed agent kept the other five 2 x the baseline so). A connect to its
port answers sooner: refused (nothing listens there: the process is gone) or unreachable
means gone; a timeout says nothing (a loaded or partitioned node, which GONE_AFTER judges).
A node that restarted within the moment answers; its 404s and `fresh` start set it right.

One look per node per `every` seconds, only for a node named in a failure report, so a
report cannot make the root connect anywhere faster than that.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from agent.core.hostport import split_hostport

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0  # s: a live node's kernel answers a connect within a round trip
LOOK_EVERY = 5.0  # s between looks at one node
MAX_REMEMBERED = 4096  # nodes whose last look is kept (the oldest go first)
GONE_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


class Liveness:
    """When a node is due a look, and the look."""

    def __init__(self, *, timeout: float = CONNECT_TIMEOUT, every: float = LOOK_EVERY) -> None:
        self.timeout = timeout
        self.every = every
        self._looked: dict[str, float] = {}  # node -> when it was last looked at

    def due(self, node: str, now: float) -> bool:
        """Whether `node` may be looked at now (and it counts as looked at from here)."""
        last = self._looked.get(node)
        if last is not None and now - last < self.every:
            return False
        self._looked.pop(node, None)
        self._looked[node] = now  # (kept in the order of looks: the oldest is first)
        while len(self._looked) > MAX_REMEMBERED:
            del self._looked[next(iter(self._looked))]
        return True

    async def gone(self, node: str) -> bool:
        """Whether nothing takes connections at `node` (host:port): refused or unreachable.
        A timeout or any other failure is not proof: False."""
        try:
            host, port = split_hostport(node)
        except ValueError:
            return False
        if port is None:
            return False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with trio.socket.socket(family, socket.SOCK_STREAM) as sock:
            with trio.move_on_after(self.timeout):
                try:
                    await sock.connect((host, port))
                except OSError as exc:
                    if exc.errno in GONE_ERRORS:
                        return True
                    log.debug("look at %s: %s", node, exc)
        return False
