"""The P2P port's application: chunks for peers (`rpc:pread`, `rpc:stat`) and, on a root,
plans for agents and preheat requests (`pollen preheat`).

Every request must carry a valid signature of the cluster token (`agent.swarm.signing.verify`);
anything else gets 401 and no data. A chunk is served only if this node holds it, or is in its
last bytes here (the root counts this node as its holder from its `finishing` report:
cut-through): then the bytes in so far go at once, and the rest once the chunk is verified (the
response is cut if it is not: the asker never completes a chunk this node did not verify); one
still being downloaded otherwise is 404, and the asker goes elsewhere. It is served from the
download's memory when it just arrived (the root sends peers to a new holder at once), else
from the cache file, with
sendfile (the receiver checks it against the root's sha256, so no byte needs to pass through
Python here) or, in an O_DIRECT cache, read into a recycled buffer and checked on the way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from agent.cache.store import CacheEntry, ChunkCache
from agent.http.responses import JSON, FileRegion, Response, bytes_response, plain_error
from agent.http.server import Request
from agent.observe.auditline import NOT_HELD, RPC_PREAD, RPC_STAT
from agent.observe.events import NULL_OBSERVER, Observer
from agent.swarm.plan import Plan
from agent.swarm.preheat import PreheatReply, PreheatTarget, parse_p2p_target
from agent.swarm.protocol import (
    AUTHORIZATION_HEADER,
    ChunkTarget,
    P2PProtocolError,
    PlanTarget,
)
from agent.swarm.replay import ReplayGuard, signed_time
from agent.swarm.signing import (
    HEADER_REPLY_AUTH,
    P2PAuthError,
    request_auth,
    sign_reply,
    verify,
)

log = logging.getLogger(__name__)

PlanHandler = Callable[[str, PlanTarget, bytes | None], Awaitable[Plan]]
PreheatHandler = Callable[[str, PreheatTarget, bytes | None], Awaitable[PreheatReply]]
# A chunk of a layer still in a download's memory (it just arrived), or None.
HotChunk = Callable[[CacheEntry, int], bytearray | memoryview | None]
# Whether a chunk is in the cache, once it landed if it is in its last bytes here.
WaitLanded = Callable[[CacheEntry, int], Awaitable[bool]]
# The bytes in so far of a chunk in its last bytes here, or None.
Arriving = Callable[[CacheEntry, int], memoryview | None]


class P2PService:
    def __init__(
        self,
        *,
        token: bytes,
        cache: ChunkCache,
        plan_handler: PlanHandler | None,
        preheat_handler: PreheatHandler | None = None,
        observer: Observer = NULL_OBSERVER,
        hot_chunk: HotChunk | None = None,
        wait_landed: WaitLanded | None = None,
        arriving: Arriving | None = None,
    ) -> None:
        self._token = token
        self._cache = cache
        self._plan = plan_handler
        self._preheat = preheat_handler
        self._hot_chunk = hot_chunk
        self._wait_landed = wait_landed
        self._arriving = arriving
        self._observer = observer  # rpc:stat / rpc:pread (audit log, metrics)
        self.refused = 0
        self._replays = ReplayGuard()  # plan requests change the root: each answered once
        self.chunks_served = 0
        self.bytes_served = 0  # a root's uploads: its CPU goal counts them
        self.served_from_memory = 0
        self.waited_for_landing = 0  # requests for a chunk in its last bytes, served once landed
        self.landing_wait_ms = 0  # their waits, in all
        self.waiting_for_landing = 0  # such requests waiting now
        self.relayed = 0  # chunks sent on as they landed (a prefix first)

    async def handle(self, request: Request) -> Response:
        try:
            node = verify(self._token, request.method, request.target, request.headers, time.time())
        except P2PAuthError as exc:
            self.refused += 1
            log.warning("p2p conn %d from %s: refused: %s", request.conn_id, request.client[0], exc)
            return plain_error(401, f"unauthorized: {exc}", close=True)
        try:
            target = parse_p2p_target(request.method, request.target)
        except P2PProtocolError as exc:
            return plain_error(exc.status_hint or 400, str(exc))
        if isinstance(target, ChunkTarget):
            return await self._chunk(request.method, target)
        if (self._preheat if isinstance(target, PreheatTarget) else self._plan) is None:
            return plain_error(404, "this node is not a root")
        authorization = None
        for name, value in request.headers:
            if name == AUTHORIZATION_HEADER:
                authorization = value
        if authorization is not None and not request.tls:
            return plain_error(400, "credentials must not cross the network in clear")
        refused = self._replays.admit(
            node, signed_time(request.headers), request_auth(request.headers)
        )
        if refused is not None:
            self.refused += 1
            log.warning("p2p conn %d from %s: replay refused: %s", request.conn_id, node, refused)
            return plain_error(401, f"unauthorized: {refused}", close=True)
        if isinstance(target, PreheatTarget):
            assert self._preheat is not None
            body = (await self._preheat(node, target, authorization)).to_json()
        else:
            assert self._plan is not None
            body = (await self._plan(node, target, authorization)).to_json()  # canonical
        signature = sign_reply(self._token, request_auth(request.headers), body)
        return bytes_response(200, body, JSON, [(HEADER_REPLY_AUTH, signature.encode())])

    async def _chunk(self, method: str, target: ChunkTarget) -> Response:
        op = RPC_STAT if method == "HEAD" else RPC_PREAD
        path = target.target().partition("?")[0]
        entry = self._cache.peek(target.digest)
        prefix = None
        if entry is not None and not entry.has_chunk(target.index) and self._arriving is not None:
            prefix = self._arriving(entry, target.index)
        if entry is not None and prefix is not None and method == "GET":
            headers = self._chunk_headers(entry, target.index)
            body = self._relay(entry, target.index, prefix, path)
            return Response(status=200, headers=headers, body=body)
        waiting, landed = time.perf_counter(), False
        if entry is not None and not entry.has_chunk(target.index) and self._wait_landed:
            self.waiting_for_landing += 1
            try:
                landed = await self._wait_landed(entry, target.index)
            finally:
                self.waiting_for_landing -= 1
        if landed:
            self.waited_for_landing += 1
            self.landing_wait_ms += round((time.perf_counter() - waiting) * 1000)
        if entry is None or entry.dropped or not (landed or entry.has_chunk(target.index)):
            self._observer.served(op, path, 0, NOT_HELD, 0.0)
            return plain_error(404, f"chunk {target.index} of {target.digest} is not here")
        length = entry.layout.length(target.index)
        headers = self._chunk_headers(entry, target.index)
        if method == "HEAD":  # rpc:stat: the chunk's length
            self._observer.served(op, path, entry.layout.offset(target.index), length, 0.0)
            return Response(status=200, headers=headers)
        body = self._send_chunk(entry, target.index, path)
        return Response(status=200, headers=headers, body=body)

    @staticmethod
    def _chunk_headers(entry: CacheEntry, index: int) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(entry.layout.length(index)).encode()),
            (b"x-pollen-layer-size", str(entry.size).encode()),
        ]

    async def _relay(
        self, entry: CacheEntry, index: int, prefix: memoryview, path: str
    ) -> AsyncIterator[memoryview]:
        """A chunk in its last bytes here: the bytes in so far at once, the rest once the
        chunk is verified, from the very buffer the prefix came from (else the response is
        cut: a prefix from a copy that lost to another, or failed its check, must not be
        completed with other bytes; the asker sees a failed transfer, not bad data)."""
        started = time.perf_counter()
        length, sent = entry.layout.length(index), False
        self._cache.pin(entry)
        try:
            yield prefix
            waiting = time.perf_counter()
            landed = self._wait_landed is not None and await self._wait_landed(entry, index)
            hot = self._hot_chunk(entry, index) if self._hot_chunk is not None else None
            if not landed or hot is None or memoryview(hot).obj is not prefix.obj:
                raise ConnectionAbortedError(f"chunk {index} of {entry.digest} did not land")
            self.landing_wait_ms += round((time.perf_counter() - waiting) * 1000)
            self.relayed += 1
            yield memoryview(hot)[len(prefix) :]
            self.chunks_served += 1
            self.bytes_served += length
            sent = True
        finally:
            self._cache.unpin(entry)
            seconds = time.perf_counter() - started
            offset = entry.layout.offset(index)
            self._observer.served(RPC_PREAD, path, offset, length if sent else -1, seconds)

    async def _send_chunk(
        self, entry: CacheEntry, index: int, path: str
    ) -> AsyncIterator[FileRegion | bytes | memoryview]:
        started = time.perf_counter()
        offset = entry.layout.offset(index)
        length = entry.layout.length(index)
        sent = False
        # A chunk of a layer passing through a ring of slots may have gone between the answer's
        # head and now: then the body is cut (the peer sees a short read, never other bytes).
        # From here its slot is not reused until the chunk is sent.
        hot = self._hot_chunk(entry, index) if self._hot_chunk is not None else None
        if hot is None and not entry.has_chunk(index):
            raise ConnectionAbortedError(f"chunk {index} of {entry.digest} went meanwhile")
        entry.sending[index] = entry.sending.get(index, 0) + 1
        self._cache.pin(entry)
        try:
            if hot is not None:
                # It just arrived (and was checked on the way in): no disk read, no readahead.
                self.served_from_memory += 1
                yield memoryview(hot)
            elif self._cache.direct or entry.slots is not None:
                # An O_DIRECT cache keeps chunks out of the page cache: sendfile would read
                # them back through it (readahead into fresh, zero-filled pages: a third of a
                # swarm agent's CPU). And a ring's slot takes the next chunk once this one
                # is passed, written in place: sendfile queues references to the file's
                # pages, not copies, so bytes still in either socket buffer would change
                # under the asker (it saw a bad chunk and banned an honest peer). Read the
                # chunk into a buffer instead (checked against its xxh3) and send that.
                yield await self._cache.read_chunk(entry, index)
            else:
                fd = self._cache.open_for_reading(entry)
                try:
                    yield FileRegion(fd=fd, offset=entry.file_offset(index), length=length)
                finally:
                    os.close(fd)
            self.chunks_served += 1
            self.bytes_served += length
            sent = True
        finally:
            entry.sending[index] -= 1
            if not entry.sending[index]:
                del entry.sending[index]
            self._cache.unpin(entry)
            seconds = time.perf_counter() - started
            self._observer.served(RPC_PREAD, path, offset, length if sent else -1, seconds)
