"""Which roots exist and which of them answer: the input to rendezvous ownership.

`roots` is either a list of ``host:port`` or one DNS name (a Kubernetes headless Service)
re-resolved every 30 s into every address it has. A root that fails a request is benched for
a while; the owner of a layer is the first root in its rendezvous order that is not benched,
so a dead root's layers move to the next root and come back when it does.
"""

from __future__ import annotations

import logging
import socket

import trio

from agent.core.hostport import join_hostport, split_hostport
from agent.swarm.ownership import rendezvous_order
from agent.swarm.protocol import parse_node

log = logging.getLogger(__name__)

RESOLVE_EVERY = 30.0
BENCH_FOR = 10.0
DISTRUST_FOR = 300.0  # s a root that answered unusably about a layer is not asked about it
MAX_DISTRUSTED = 4096  # (root, layer) pairs remembered


class RootSet:
    def __init__(self, entries: tuple[str, ...], *, p2p_port: int) -> None:
        self._entries = entries
        self._p2p_port = p2p_port
        self._dns_name: str | None = None
        if len(entries) == 1:
            host, port = split_hostport(entries[0])
            if not _is_ip(host):
                self._dns_name = host
                self._p2p_port = port or p2p_port
        self.addresses: list[str] = [] if self._dns_name else [parse_node(e) for e in entries]
        self._benched_until: dict[str, float] = {}
        self._distrusted_until: dict[tuple[str, str], float] = {}

    @property
    def dynamic(self) -> bool:
        return self._dns_name is not None

    async def resolve(self) -> None:
        """Re-read the DNS name (no-op for a static list); keeps the old set on failure."""
        if self._dns_name is None:
            return
        try:
            infos = await trio.socket.getaddrinfo(
                self._dns_name, self._p2p_port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            log.warning(
                "roots: cannot resolve %s: %s (keeping %s)", self._dns_name, exc, self.addresses
            )
            return
        found = sorted({parse_node(join_hostport(info[4][0], self._p2p_port)) for info in infos})
        if found != self.addresses:
            log.info("roots: %s now resolves to %s", self._dns_name, ", ".join(found))
        self.addresses = found

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a DNS-named root set fresh."""
        await self.resolve()
        task_status.started()
        if self._dns_name is None:
            return
        while True:
            await trio.sleep(RESOLVE_EVERY)
            await self.resolve()

    def bench(self, root: str, why: str) -> None:
        if self._benched_until.get(root, 0.0) <= trio.current_time():
            log.warning(
                "roots: %s does not answer (%s); skipping it for %.0fs", root, why, BENCH_FOR
            )
        self._benched_until[root] = trio.current_time() + BENCH_FOR

    def distrust(self, root: str, digest: str, why: str) -> None:
        """`root` answered about `digest`, but not usefully (it cannot hold the layer, its size
        or its chunks were wrong): ask the next root, or the registry, about this layer."""
        now = trio.current_time()
        log.warning("roots: not asking %s about %s for %.0fs: %s", root, digest, DISTRUST_FOR, why)
        if len(self._distrusted_until) >= MAX_DISTRUSTED:
            self._distrusted_until = {
                k: until for k, until in self._distrusted_until.items() if until > now
            }
            while len(self._distrusted_until) >= MAX_DISTRUSTED:  # all current: oldest go
                del self._distrusted_until[next(iter(self._distrusted_until))]
        self._distrusted_until[(root, digest)] = now + DISTRUST_FOR

    def owners(self, digest: str) -> list[str]:
        """Live roots in rendezvous order for `digest`: the first is the owner. A root benched
        (not answering) or distrusted for this layer is skipped."""
        now = trio.current_time()
        return [
            root
            for root in rendezvous_order(digest, self.addresses)
            if self._benched_until.get(root, 0.0) <= now
            and self._distrusted_until.get((root, digest), 0.0) <= now
        ]

    def state(self) -> list[dict[str, object]]:
        now = trio.current_time()
        return [
            {"root": r, "state": "benched" if self._benched_until.get(r, 0.0) > now else "up"}
            for r in self.addresses
        ]


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
