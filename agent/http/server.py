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

import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import ssl
import sys
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import count

import h11
import trio

from agent.http.limits import Limits, PortLimits
from agent.http.responses import (
    FileRegion,
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
MAX_REQUEST_BODY = 64 * 1024  # pull-only API: bodies are never expected, only discarded
RECENT_REQUESTS = 256  # request lines kept for statistics() (`pollen doctor`'s canary check)
RECEIVE_SIZE = 64 * 1024
TLS_HANDSHAKE_BYTE = 0x16


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
        conn = _Connection(stream, self._settings, conn_id, self.limits, client[0])
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

    async def _run_cycles(self, conn: _Connection, client: tuple[str, int], tls: bool) -> None:
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

    async def _one_cycle(self, conn: _Connection, request: Request) -> bool:
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


def check_head(event: h11.Request, max_header_bytes: int) -> h11.Request:
    """The request head, or h11.RemoteProtocolError: 431 when it is over `max_header_bytes`,
    405 for CONNECT.

    h11 bounds only heads that arrive in pieces; one that arrived whole in a single read is
    measured here, so the limit holds however it was sent. No port is a forward proxy, and a
    2xx answer to CONNECT would switch h11 to a tunnel before the answer's body could be sent
    (the webhook answers 200 on /healthz to any method). Pure, so it is fuzzed with h11
    (fuzz/http_head.py) on the bytes a client sends.
    """
    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    if size > max_header_bytes:
        raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
    if event.method == b"CONNECT":
        raise h11.RemoteProtocolError("CONNECT is not served (no tunnels)", error_status_hint=405)
    return event


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


SEND_STEP = 1 << 20  # bytes handed to the kernel under one send deadline
SMALL_BODY = 64 << 10  # a bytes body up to this size goes out with its head in one send


class _Connection:
    """h11 state plus the stream: the dozen-line adapter of h11's trio example."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        settings: ServerSettings,
        conn_id: int,
        limits: PortLimits,
        client: str,
    ) -> None:
        self.stream = stream
        self.settings = settings
        self.conn_id = conn_id
        self.limits = limits
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.max_header_bytes)
        self._first_bytes = True
        # The head being answered is a HEAD's (even one refused): h11 takes no body after it.
        self.head_request = False
        self.body_bytes = 0  # of the response being sent

    async def _receive_into_h11(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if self._first_bytes and data:
                self._first_bytes = False
                if data[0] == TLS_HANDSHAKE_BYTE and not isinstance(self.stream, trio.SSLStream):
                    # skopeo with insecure=true tries TLS first on a plain port: close cleanly.
                    log.debug("conn %d: TLS handshake on a plain-HTTP port; closing", self.conn_id)
                    return False
            self.h11.receive_data(data)
            return True
        return False

    async def next_request(self) -> h11.Request | None:
        """The next request head, or None when the peer closed or timed out. Once its first
        byte is here the whole head has `read_timeout` to arrive, not each read (a byte every
        few seconds would hold the connection, and its slot, forever)."""
        read_timeout = self.settings.read_timeout
        head_by = trio.current_time() + read_timeout if self.h11.trailing_data[0] else None
        self.head_request = False
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                timeout = self.settings.idle_timeout
                if head_by is not None:
                    timeout = head_by - trio.current_time()
                    if timeout <= 0:
                        log.info("conn %d: no whole head in %gs", self.conn_id, read_timeout)
                        self.limits.hit("head_timeout")
                        return None
                if self.h11.their_state is h11.DONE or not await self._receive_into_h11(timeout):
                    return None
                if head_by is None:
                    head_by = trio.current_time() + read_timeout
                continue
            if isinstance(event, h11.Request):
                self.head_request = event.method == b"HEAD"
                return check_head(event, self.settings.max_header_bytes)
            if isinstance(event, h11.ConnectionClosed):
                return None
            # Data/EndOfMessage of a previous cycle cannot appear here; anything else is noise.
            return None

    async def read_body(self, limit: int) -> bytes | None:
        """Read the request body. With `limit` 0, drop it (GET/HEAD bodies are meaningless),
        bounded by MAX_REQUEST_BODY, and return b""; otherwise return it, bounded by `limit`,
        or None when the peer went away or stalled before its end. Too large: 413."""
        keep = limit > 0
        bound = limit if keep else MAX_REQUEST_BODY
        parts: list[bytes] = []
        received = 0
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if not await self._receive_into_h11(self.settings.read_timeout):
                    return None if keep else b""
                continue
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > bound:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
                if keep:
                    parts.append(bytes(event.data))
                continue
            if keep and not isinstance(event, h11.EndOfMessage):
                return None
            return b"".join(parts)

    async def linger(self, budget: int = 8 << 20, seconds: float = 1.0) -> None:
        """Read and drop what the client is still sending (a body we refused), bounded, so
        that closing does not reset the connection before it has read our answer."""
        with trio.move_on_after(seconds):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()  # the answer is complete: the client may close
            while budget > 0:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                budget -= len(data)

    async def _send(self, event: h11.Event) -> None:
        # Passthrough keeps a multi-MiB Data payload as the caller's buffer instead of joining
        # it into a fresh bytes object: one copy less per chunk served.
        pieces = self.h11.send_with_data_passthrough(event)
        throttle = self.settings.throttle
        if throttle is not None and isinstance(event, h11.Data):
            await throttle(len(event.data))
        try:
            for piece in pieces or ():
                if isinstance(piece, FileRegion):
                    await self._send_region(piece)
                elif piece:
                    await self._send_bytes(piece)
        except BaseException:
            self.h11.send_failed()
            raise
        if isinstance(event, h11.Data):
            self.body_bytes += len(event.data)

    async def _send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data` to the kernel in steps of SEND_STEP, each under the send deadline; the
        limits see the connection as stalled while a step is in the kernel's hands."""
        view = memoryview(data)
        if not isinstance(self.stream, trio.SocketStream):  # TLS: through the SSL stream
            for offset in range(0, len(view), SEND_STEP):
                with self._progress():
                    await self.stream.send_all(view[offset : offset + SEND_STEP])
            return
        await self._write_socket(self.stream.socket, view)

    async def _write_socket(self, sock: trio.socket.SocketType, view: memoryview) -> None:
        """write(2) straight to the socket: with the 4 MiB send buffer of `tune_for_bulk` the
        kernel mostly takes a whole chunk in one call. trio's send_all turned the event loop
        after every send, four times per 4 MiB in SEND_STEP pieces; this turns it once, or
        while it waits for room. The steps are counted in bytes, not calls."""
        fd, total, sent = sock.fileno(), len(view), 0
        waited = False
        while sent < total:
            step_end = min(total, sent + SEND_STEP)
            with self._progress():
                while sent < step_end:
                    try:
                        sent += os.write(fd, view[sent:])
                    except BlockingIOError:
                        waited = True
                        await trio.lowlevel.wait_writable(sock)
                    except OSError as exc:
                        raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        if not waited:
            await trio.lowlevel.checkpoint()  # a schedule point per piece, as send_all had

    async def _send_region(self, region: FileRegion) -> None:
        """sendfile(2) on plain TCP; on TLS (no sendfile) read and send in pieces."""
        offset, remaining = region.offset, region.length
        if not isinstance(self.stream, trio.SocketStream):
            while remaining:
                n = min(remaining, SEND_STEP)
                piece = await trio.to_thread.run_sync(os.pread, region.fd, n, offset)
                if not piece:
                    raise OSError(errno.EIO, f"pread: file ended {remaining} bytes early")
                await self._send_bytes(piece)
                offset += len(piece)
                remaining -= len(piece)
            return
        sock = self.stream.socket
        while remaining:
            try:
                sent = os.sendfile(sock.fileno(), region.fd, offset, remaining)
            except BlockingIOError:
                with self._progress():
                    await trio.lowlevel.wait_writable(sock)
                continue
            if sent == 0:
                raise OSError(errno.EIO, f"sendfile: file ended {remaining} bytes early")
            offset += sent
            remaining -= sent
            await trio.lowlevel.checkpoint_if_cancelled()

    @contextlib.contextmanager
    def _progress(self) -> Iterator[None]:
        """A wait for the client to take bytes: under the send deadline, and seen by the
        limits as a stall until it returns."""
        timeout = self.settings.send_timeout
        self.limits.sending(self.conn_id, True)
        try:
            with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
                yield
        except trio.TooSlowError:
            log.info("conn %d: client took no bytes for %gs; cutting", self.conn_id, timeout)
            self.limits.hit("send_timeout")
            raise
        finally:
            self.limits.sending(self.conn_id, False)

    async def _send_whole(self, head: h11.Response, body: bytes) -> None:
        """A small answer (a plan, an error) in one send: one system call and one event-loop
        turn instead of two; a root answers thousands of plan requests a second."""
        throttle = self.settings.throttle
        if throttle is not None and body:
            await throttle(len(body))
        message = self.h11.send(head) or b""
        if body:
            message += self.h11.send(h11.Data(data=body)) or b""
        message += self.h11.send(h11.EndOfMessage()) or b""
        try:
            await self.stream.send_all(message)
        except BaseException:
            self.h11.send_failed()
            raise
        self.body_bytes += len(body)

    async def send_response(self, response: Response, *, head_only: bool) -> bool:
        """Send a response; False when a streamed body was cut short (connection must close)."""
        headers = [(b"server", self.settings.server_name), *response.headers]
        body = response.body
        try:
            head = h11.Response(status_code=response.status, headers=headers)
            if isinstance(body, bytes) and len(body) <= SMALL_BODY and not head_only:
                await self._send_whole(head, body)
                return True
            await self._send(head)
            if head_only:
                await self._send(h11.EndOfMessage())
                return True
            async with self.limits.response(self.conn_id, self.client):
                if isinstance(body, bytes):
                    if body:
                        await self._send(h11.Data(data=body))
                else:
                    async for piece in body:
                        if piece:
                            await self._send(h11.Data(data=piece))
            await self._send(h11.EndOfMessage())
            return True
        except h11.LocalProtocolError as exc:
            log.error("conn %d: response does not match its framing: %s", self.conn_id, exc)
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # noqa: BLE001 - any body failure must cut the message short
            log.warning("conn %d: response cut short: %s", self.conn_id, exc)
            return False
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
            # A body cut by an exception (a client gone, a send deadline, a reclaim) leaves
            # its frames, and the chunk buffers in their locals, to the exception's traceback,
            # which sits in a reference cycle until a full collection: let them go now.
            cut = sys.exc_info()[1]
            if cut is not None:
                traceback.clear_frames(cut.__traceback__)

    async def close(self) -> None:
        try:
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
