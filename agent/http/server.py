"""The HTTP/1.1 server under the proxy and P2P ports: h11 on trio, nothing registry-specific.

Theory of operation: one task (and nursery) per connection runs request cycles. A cycle reads
a request head under a deadline (idle timeout before the first byte, read timeout after it),
hands a `Request` to the application, and writes the `Response` it returns (that type and
its common shapes are in `agent.http.responses`). A streamed body that raises is cut off: the
connection closes without completing the message, so the client sees a short body rather than
a complete one with wrong bytes. Draining (SIGTERM) stops accepting, closes idle connections,
and gives requests in flight a bounded grace period (`agent.http.shutdown` waits for the
signal and drains every server of a process).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count

import h11
import trio

from agent.http.connection import HttpConnection
from agent.http.limits import Limits, PortLimits
from agent.http.responses import (
    Headers,
    Response,
    header_lines,
    header_value,
    plain_error,
)
from agent.http.sockets import (
    listener_port,
    open_listeners,
    peer_address,
    tune_for_bulk,
    wait_pending,
)

__all__ = ["HttpServer", "Request", "ServerSettings", "listener_port", "open_listeners"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024
RECENT_REQUESTS = 256  # request lines kept for statistics() (`pollen doctor`'s canary check)


@dataclass(frozen=True, kw_only=True)
class Request:
    """A request head as the application sees it; repeated headers stay separate lines."""

    method: str
    target: str
    headers: Headers
    client: tuple[str, int]
    conn_id: int
    tls: bool
    # The request body, read only when ServerSettings.max_request_body allows it (else b"").
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def header_lines(self, name: str) -> list[bytes]:
        return header_lines(self.headers, name)

    @property
    def client_is_loopback(self) -> bool:
        try:
            addr = ipaddress.ip_address(self.client[0].split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback


Handler = Callable[[Request], Awaitable[Response]]
ErrorResponder = Callable[[int, str], Response]


@dataclass(kw_only=True)
class ServerSettings:
    read_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_header_bytes: int = MAX_HEADER_BYTES
    server_name: bytes = b"pollen"
    # Awaited with each body piece's size before it is sent: the node's upload cap
    # (throttleLimitMB), shared by every server of the node.
    throttle: Callable[[int], Awaitable[None]] | None = None
    # Connections, connections per client address, and bodies sent at once (0: no limit);
    # who gives way at each is in `agent.http.limits`.
    limits: Limits = dataclasses.field(default_factory=Limits)
    # A send that cannot hand the kernel SEND_STEP bytes in this long is cut (0: never): a
    # client that stopped reading does not hold its buffer and its connection for ever.
    send_timeout: float = 0.0
    # 0: request bodies are read and dropped (at most MAX_REQUEST_BODY bytes, else 413), as
    # the pull-only ports want; > 0: bodies up to this many bytes reach the handler as
    # Request.body (the admission webhook's POSTs), larger ones get 413.
    max_request_body: int = 0
    # Told of every request handled: (status, response body bytes sent, seconds from the
    # request head to the end of the response) -- the metrics' ``http`` type.
    on_request: Callable[[int, int, float], None] | None = None
    # Told the name of each limit reached (`agent.http.limits`, and "send_timeout").
    on_limit: Callable[[str], None] | None = None


class HttpServer:
    """Serves one application over any number of listeners until drained."""

    def __init__(
        self,
        handler: Handler,
        settings: ServerSettings,
        *,
        name: str,
        on_protocol_error: ErrorResponder = plain_error,
    ) -> None:
        self._handler = handler
        self._settings = settings
        self._name = name
        self._error_response = on_protocol_error
        self._conn_ids = count(1)
        self._draining = False
        self._active_requests = 0
        self._idle_scopes: set[trio.CancelScope] = set()
        self._accept_scope: trio.CancelScope | None = None
        self._quiet = trio.Event()
        self._quiet.set()
        self.limits = PortLimits(settings.limits, name=name, on_limit=settings.on_limit)
        self._requests_total = 0
        self._recent: deque[str] = deque(maxlen=RECENT_REQUESTS)

    @property
    def draining(self) -> bool:
        return self._draining

    def statistics(self) -> dict[str, object]:
        """Counters, and the last request lines (method and target: no headers, so no
        credentials), which `pollen doctor` reads to see its canary pull arrive."""
        return {
            "active_requests": self._active_requests,
            "draining": self._draining,
            "requests": self._requests_total,
            "recent_requests": list(self._recent),
            **self.limits.statistics(),
        }

    async def serve(
        self,
        listeners: list[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until `drain` is called; returns when every connection ended."""
        try:
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        task_status.started()
                await self._close(listeners)  # drained: no new connections meanwhile
        finally:
            await self._close(listeners)  # also when cancelled from outside

    @staticmethod
    async def _close(listeners: list[trio.abc.Listener[trio.abc.Stream]]) -> None:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        # Accepting runs under the accept scope (cancelled by drain); connections run in the
        # outer nursery so drain can let them finish.
        while True:
            await self.limits.room(functools.partial(wait_pending, listener))
            try:
                stream = await listener.accept()
            except (OSError, trio.BrokenResourceError) as exc:
                log.warning("%s: accept failed: %s", self._name, exc)
                await trio.sleep(0.05)
                continue
            # Registered before the next accept, so the limit counts it at once.
            conn_id = next(self._conn_ids)
            scope = trio.CancelScope()  # cancelled if the limits reclaim this connection
            admitted = self.limits.open(conn_id, peer_address(stream)[0], scope)
            nursery.start_soon(self._serve_connection, stream, conn_id, scope, admitted)

    async def drain(self, grace: float) -> None:
        """Stop accepting, close idle connections, wait up to `grace` for requests in flight."""
        self._draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for scope in list(self._idle_scopes):
            scope.cancel()
        with trio.move_on_after(grace) as waited:
            await self._quiet.wait()
        if waited.cancelled_caught:
            log.warning(
                "%s: %d requests still in flight after %.1fs grace; closing them",
                self._name,
                self._active_requests,
                grace,
            )

    async def _serve_connection(
        self, stream: trio.abc.Stream, conn_id: int, scope: trio.CancelScope, admitted: bool
    ) -> None:
        client = peer_address(stream)
        tune_for_bulk(stream)
        tls = isinstance(stream, trio.SSLStream)
        conn = HttpConnection(stream, self._settings, conn_id, self.limits, client[0])
        try:
            if admitted:
                with scope:
                    await self._run_cycles(conn, client, tls)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
            log.debug("conn %d: peer went away: %s", conn_id, exc)
        except ssl.SSLError as exc:
            log.debug("conn %d: TLS error: %s", conn_id, exc)
        finally:
            self.limits.close(conn_id)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await conn.close()

    async def _run_cycles(self, conn: HttpConnection, client: tuple[str, int], tls: bool) -> None:
        while not self._draining:
            idle_scope = trio.CancelScope()
            self._idle_scopes.add(idle_scope)
            self.limits.waiting(conn.conn_id, True)
            try:
                with idle_scope:
                    event = await conn.next_request()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                log.info("conn %d: bad request (%s): %s", conn.conn_id, status, exc)
                if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    message = "request header too large" if status == 431 else f"bad request: {exc}"
                    error = self._error_response(status, message)
                    await conn.send_response(error, head_only=conn.head_request)
                return
            finally:
                self._idle_scopes.discard(idle_scope)
                self.limits.waiting(conn.conn_id, False)
            if event is None:  # clean close, idle timeout, TLS on a plain port, or drain
                return
            request = request_from_head(event, client=client, conn_id=conn.conn_id, tls=tls)
            self._active_requests += 1
            self._quiet = trio.Event() if self._quiet.is_set() else self._quiet
            try:
                keep = await self._one_cycle(conn, request)
            finally:
                self._active_requests -= 1
                if self._active_requests == 0:
                    self._quiet.set()
            if not keep:
                return

    async def _one_cycle(self, conn: HttpConnection, request: Request) -> bool:
        started = time.perf_counter()
        self._recent.append(f"{request.method} {request.target}")
        self._requests_total += 1
        try:
            body = await conn.read_body(self._settings.max_request_body)
        except h11.RemoteProtocolError as exc:
            # Answer (413) and close; raised out of here it would end the whole server.
            log.info("conn %d: %s %s: %s", conn.conn_id, request.method, request.target, exc)
            error = self._error_response(exc.error_status_hint, str(exc))
            await conn.send_response(error, head_only=request.method == "HEAD")
            await conn.linger()
            return False
        if body is None:  # the peer stopped or stalled mid-body: nothing to hand on
            return False
        if body:
            request = dataclasses.replace(request, body=body)
        try:
            response = await self._handler(request)
        except Exception:
            log.exception(
                "conn %d: handler failed for %s %s", conn.conn_id, request.method, request.target
            )
            response = self._error_response(500, "internal error")
        head_only = request.method == "HEAD"
        conn.body_bytes = 0
        try:
            completed = await conn.send_response(response, head_only=head_only)
        finally:
            if self._settings.on_request is not None:
                elapsed = time.perf_counter() - started
                self._settings.on_request(response.status, conn.body_bytes, elapsed)
        if not completed:
            return False
        if conn.h11.our_state is h11.MUST_CLOSE or conn.h11.their_state is h11.MUST_CLOSE:
            return False
        try:
            conn.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True


def request_from_head(
    event: h11.Request, *, client: tuple[str, int], conn_id: int, tls: bool
) -> Request:
    """The application's view of a request head: text method and target (latin-1, so every
    byte h11 let through maps to one character and nothing can fail), header names lower-case."""
    return Request(
        method=event.method.decode("ascii", "replace"),
        target=event.target.decode("latin-1"),
        headers=[(k.lower(), v) for k, v in event.headers],
        client=client,
        conn_id=conn_id,
        tls=tls,
    )
