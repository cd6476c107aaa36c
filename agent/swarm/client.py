"""Signed requests to other nodes' P2P ports: chunk reads from peers, plans from roots.

Every request carries the x-pollen-* headers (`agent.swarm.signing.request_headers`), and a
root's plan must come back signed for that request (`verify_reply`), else the root counts as
not answering. Chunk bytes
are read straight into a buffer of the chunk's length; the caller checks them against the
root's sha256 before it trusts them. A client's Authorization is passed to a root only when
the P2P port speaks TLS.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from agent.http.client import HttpClient, HttpClientError
from agent.swarm.plan import Plan
from agent.swarm.preheat import MAX_REPLY_BYTES, PreheatReply, PreheatTarget
from agent.swarm.protocol import (
    AUTHORIZATION_HEADER,
    MAX_PLAN_BYTES,
    ChunkTarget,
    P2PError,
    PlanTarget,
)
from agent.swarm.signing import P2PAuthError, request_auth, request_headers, verify_reply

log = logging.getLogger(__name__)


class Hasher(Protocol):
    """What `fetch_chunk` feeds a chunk's bytes to as they land (hashlib's objects)."""

    def update(self, data: memoryview, /) -> None: ...


class PeerError(Exception):
    """A peer or root did not deliver: unreachable, refused, timed out, or said no."""

    def __init__(self, node: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.status = status


# Where `fetch_chunk`'s progress hook first hears a chunk's fill (then at the levels it asks
# for): by then the rate so far says when the end is near.
FIRST_LOOK = 1 << 20


class P2PClient:
    def __init__(self, http: HttpClient, *, token: bytes, node: str, tls: bool) -> None:
        self._http = http
        self._token = token
        self.node = node
        self.tls = tls
        self._scheme = "https" if tls else "http"
        # Random start: a restarted process never repeats a nonce its root still remembers.
        self._nonces = itertools.count(secrets.randbits(48) + 1)

    def _headers(self, method: str, target: str) -> list[tuple[bytes, bytes]]:
        return request_headers(self._token, self.node, method, target, time.time())

    async def fetch_chunk(
        self,
        source: str,
        digest: str,
        index: int,
        length: int,
        *,
        into: memoryview,
        progress: Callable[[int], Awaitable[int | None]] | None = None,
        hashers: Sequence[Hasher] = (),
        headed: Callable[[], None] | None = None,
    ) -> float:
        """Fill `into` (exactly `length` bytes) with chunk `index` of `digest` from `source`;
        the seconds spent in `hashers`, which hear every piece the moment it lands: a piece
        just copied in by the kernel is still in the CPU's cache, where a second pass over the
        whole 4 MiB after the last byte reads it back from memory (0.9 CPU-s per GiB against
        0.6 here), and holds the event loop for the whole chunk at the end of each transfer.

        `progress` hears the bytes received so far: first at FIRST_LOOK, then at the fill it
        returns (None: after every read). A read wakes only once its whole view arrived
        (SO_RCVLOWAT), so a read ends exactly at the level asked for: the pipelining hook
        hears the moment a transfer is about to end in two or three reads per chunk (it heard
        every 256 KiB of the last 2 MiB, ten event-loop turns per chunk). `headed` hears that
        the response's head came (the first byte: the planner's lead measures that wait)."""
        target = ChunkTarget(digest=digest, index=index).target()
        url = f"{self._scheme}://{source}{target}"
        try:
            async with self._http.request("GET", url, self._headers("GET", target)) as response:
                if response.status != 200:
                    raise PeerError(
                        source, f"chunk {index}: status {response.status}", status=response.status
                    )
                if response.content_length != length:
                    raise PeerError(
                        source, f"chunk {index}: {response.content_length} bytes, want {length}"
                    )
                if headed is not None:
                    headed()
                filled, hashing = 0, 0.0
                ask_at: int | None = min(length, FIRST_LOOK)
                while filled < length:
                    end = length if ask_at is None or ask_at <= filled else ask_at
                    n = await response.receive_into(into[filled:end])
                    if n == 0:
                        raise PeerError(source, f"chunk {index}: body ended at {filled}")
                    if hashers:
                        started, piece = time.perf_counter(), into[filled : filled + n]
                        for hasher in hashers:
                            hasher.update(piece)
                        hashing += time.perf_counter() - started
                    filled += n
                    if progress is not None and (ask_at is None or filled >= ask_at):
                        ask_at = await progress(filled)
        except HttpClientError as exc:
            raise PeerError(source, str(exc)) from exc
        return hashing

    async def plan(self, root: str, request: PlanTarget, authorization: bytes | None) -> Plan:
        """Ask `root` for work on a layer (it may hold the request up to a few seconds)."""
        assert not request.nonce
        body = await self._signed_get(root, request.target(), authorization, MAX_PLAN_BYTES)
        try:
            return Plan.from_json(body)
        except P2PError as exc:
            raise PeerError(root, f"bad plan: {exc}") from exc

    async def preheat(
        self, root: str, request: PreheatTarget, authorization: bytes | None
    ) -> PreheatReply:
        """Ask `root` to hold a layer in its cache; where it stands (held up to a few
        seconds while the root's download goes on). The credential goes only over TLS."""
        assert not request.nonce
        body = await self._signed_get(root, request.target(), authorization, MAX_REPLY_BYTES)
        try:
            return PreheatReply.from_json(body)
        except P2PError as exc:
            raise PeerError(root, f"bad preheat reply: {exc}") from exc

    async def _signed_get(
        self, root: str, target: str, authorization: bytes | None, limit: int
    ) -> bytes:
        """A request that changes the root (a plan, a preheat) and its signed reply's body."""
        # Unique under the signature: the root answers each such request once. Appended to
        # the target as PlanTarget.target() writes `n=` (a replace() would check the whole
        # request again, its holdings included, on every plan request).
        target = f"{target}&n={next(self._nonces)}"
        headers = self._headers("GET", target)
        if authorization and self.tls:
            headers.append((AUTHORIZATION_HEADER, authorization))
        url = f"{self._scheme}://{root}{target}"
        what = target.removeprefix("/p2p/v1/").partition("/")[0]
        try:
            async with self._http.request("GET", url, headers) as response:
                body = await response.read_all(limit)
                if response.status != 200:
                    raise PeerError(
                        root,
                        f"{what}: status {response.status}: {body[:200]!r}",
                        status=response.status,
                    )
            replied = response.headers
        except HttpClientError as exc:
            raise PeerError(root, str(exc)) from exc
        try:
            verify_reply(self._token, request_auth(headers), body, replied)
        except P2PAuthError as exc:
            raise PeerError(root, f"{what} refused: {exc.reason}") from exc
        return body
