"""A small HTTP/1.1 client: h11 on trio, keep-alive pool, TLS, streamed bodies.

Nothing registry-specific lives here (retries, redirects and auth are in `agent.registry.client`;
TLS contexts are made by `agent.http.tls`).
A response is an async context manager: leaving it after the body was fully read returns the
connection to the pool; leaving it early closes the connection, so a half-read body can never
leak into the next request.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from agent.core.hostport import join_hostport
from agent.http.responses import Headers, header_lines, header_value

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
# How many bytes of a raw body (a chunk, a layer) must wait in the socket before a read wakes.
RAW_LOW_WATER = 1 << 20
MAX_IDLE_PER_ORIGIN = 16
MAX_RESPONSE_HEADER_BYTES = 64 * 1024
# A body must bring this much per read timeout (upstreamTimeout), not merely some bytes
# within each: a sender trickling a byte every few seconds held a download, its slot and its
# readers for ever. 64 KiB per 30 s is ~2 KiB/s, far below any registry that works.
MIN_BODY_BYTES = 64 * 1024


class BodyPace:
    """Counts a body's bytes against time; `check` says when a whole window brought too few."""

    def __init__(self, window: float, floor: int = MIN_BODY_BYTES) -> None:
        self.window, self.floor = window, floor
        self._since: float | None = None
        self._bytes = 0

    def check(self, received: int, now: float) -> str | None:
        """Add `received` bytes at `now`; a complaint once a window passed below the floor."""
        if self._since is None:
            self._since = now
        self._bytes += received
        elapsed = now - self._since
        if elapsed < self.window:
            return None
        if self._bytes < self.floor:
            due = f"{self.floor} per {self.window:g} s due"
            return f"sent {self._bytes} bytes in {elapsed:.0f} s ({due})"
        self._since, self._bytes = now, 0
        return None


async def receive_waiting_first(sock: trio.socket.SocketType, view: memoryview) -> int:
    """Wait until the socket is readable (SO_RCVLOWAT says how much that takes), then read.

    trio's recv_into reads first and waits only when nothing is there: under a low-water
    mark that eager read takes the few packets that just arrived, the next one finds nothing,
    and only then does it wait for the mark, three system calls and two loop turns for what
    one wait and one read do."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.readv(sock.fileno(), [view])
        except BlockingIOError:  # woken without data after all: wait again
            continue


class HttpClientError(Exception):
    """The connection failed (refused, reset, timed out, TLS, or a protocol violation)."""


@dataclass(frozen=True, kw_only=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported URL {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(scheme=parts.scheme, host=parts.hostname, port=port)

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        return join_hostport(self.host, None if self.port == default else self.port).encode()


def request_target(url: str) -> bytes:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return target.encode()


def new_client_state() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEADER_BYTES)


class _PooledConnection:
    def __init__(self, origin: Origin, stream: trio.abc.Stream) -> None:
        self.origin = origin
        self.stream = stream
        self.h11 = new_client_state()
        self.reused = False

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


class ClientResponse:
    """Status and headers of an upstream response, with its body as a stream."""

    def __init__(
        self, conn: _PooledConnection, event: h11.Response, url: str, timeout: float
    ) -> None:
        self._conn = conn
        self.status: int = event.status_code
        self.headers: Headers = [(k.lower(), v) for k, v in event.headers]
        self.url = url
        self._timeout = timeout
        self.complete = False
        self._raw_remaining: int | None = None
        self._raw_pending = memoryview(b"")
        self._low_water = 1  # the socket's SO_RCVLOWAT (the kernel's default: one byte)
        connection = b",".join(header_lines(self.headers, "connection")).lower()
        self._keep_alive = event.http_version == b"1.1" and b"close" not in connection
        self._pace = BodyPace(timeout)

    def _paced(self, received: int) -> None:
        complaint = self._pace.check(received, trio.current_time())
        if complaint is not None:
            raise HttpClientError(f"{self.url} {complaint}: too slow")

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def header_lines(self, name: str) -> list[bytes]:
        return header_lines(self.headers, name)

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body pieces as they arrive; each wait is bounded by the read timeout."""
        conn = self._conn
        while not self.complete:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpClientError(f"bad response from {self.url}: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    with trio.fail_after(self._timeout):
                        data = await conn.stream.receive_some(RECEIVE_SIZE)
                except trio.TooSlowError as exc:
                    raise HttpClientError(f"read from {self.url} timed out") from exc
                except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
                    raise HttpClientError(f"read from {self.url} failed: {exc}") from exc
                self._paced(len(data))
                try:
                    conn.h11.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    raise HttpClientError(f"bad response from {self.url}: {exc}") from exc
                continue
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpClientError(f"{self.url} closed the connection mid-body")
            else:
                raise HttpClientError(f"unexpected event from {self.url}: {event!r}")

    async def receive_into(self, view: memoryview) -> int:
        """Copy the next body bytes straight into `view`; 0 once the body is complete.

        Blob bodies are hundreds of MiB: reading them through h11 costs several copies per
        byte, so bodies with a Content-Length are read from the socket directly (recv_into on
        plain TCP). Once the last byte is in, the connection starts over with a fresh h11
        state and goes back to the pool (`_raw_done`): a swarm agent fetches every chunk as
        one such body, and a new TCP connection per chunk cost both ends a connect, an
        accept, a handshake and a close each time.
        """
        if self._raw_remaining is None:
            length = self.content_length
            if length is None:
                raise HttpClientError(f"{self.url}: raw body read needs a Content-Length")
            self._raw_remaining = length
            self._raw_pending = memoryview(self._conn.h11.trailing_data[0])
        if self._raw_remaining == 0:
            return 0
        want = min(len(view), self._raw_remaining)
        if len(self._raw_pending):
            n = min(want, len(self._raw_pending))
            view[:n] = self._raw_pending[:n]
            self._raw_pending = self._raw_pending[n:]
        else:
            n = await self._receive_raw(view[:want])
        self._raw_remaining -= n
        if self._raw_remaining == 0:
            self._raw_done()
        return n

    def _raw_done(self) -> None:
        """The raw body is complete: make the connection reusable when the message allows it
        (HTTP/1.1 keep-alive, nothing past the body) with a fresh h11 state at a message
        boundary, and the socket's wake-up threshold back at one byte for the next head."""
        if len(self._raw_pending) or not self._keep_alive:
            return  # bytes past the body, or the server closes: not reusable
        conn = self._conn
        stream = conn.stream
        if isinstance(stream, trio.SocketStream) and self._low_water != 1:
            try:
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError as exc:
                log.debug("SO_RCVLOWAT reset on %s: %s", self.url, exc)
                return
            self._low_water = 1
        conn.h11 = new_client_state()
        self.complete = True

    async def _receive_raw(self, view: memoryview) -> int:
        stream = self._conn.stream
        try:
            with trio.fail_after(self._timeout):
                if isinstance(stream, trio.SocketStream):
                    self._set_low_water(stream, min(len(view), RAW_LOW_WATER))
                    n = await receive_waiting_first(stream.socket, view)
                else:
                    data = await stream.receive_some(len(view))
                    n = len(data)
                    view[:n] = data
        except trio.TooSlowError as exc:
            raise HttpClientError(f"read from {self.url} timed out") from exc
        except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
            raise HttpClientError(f"read from {self.url} failed: {exc}") from exc
        if n == 0:
            raise HttpClientError(f"{self.url} closed the connection mid-body")
        self._paced(n)
        return n

    def _set_low_water(self, stream: trio.SocketStream, target: int) -> None:
        """Wake for this body only once `target` bytes wait in the socket (or it closes).

        A body arriving at link rate otherwise wakes the event loop for every few packets: a
        swarm agent turned its loop 4,000 times per 128 MiB received, ~64 KiB per recv, and
        each turn costs far more in Python than the copy. `target` never exceeds what the body
        still owes, so the last bytes wake us too; the kernel grows the receive buffer to fit.
        """
        if target == self._low_water:
            return
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, target)
        except OSError as exc:  # not fatal: the default works, only with more wake-ups
            log.debug("SO_RCVLOWAT on %s: %s", self.url, exc)
            target = 1
        self._low_water = target

    async def read_all(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes (manifests, error bodies)."""
        parts: list[bytes] = []
        total = 0
        async for piece in self.iter_body():
            total += len(piece)
            if total > limit:
                raise HttpClientError(f"body from {self.url} larger than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)


class HttpClient:
    """Connection pool keyed by origin; one instance per process."""

    def __init__(self, ssl_context: ssl.SSLContext, timeout: float) -> None:
        self._ssl_context = ssl_context
        self._timeout = timeout
        self._idle: dict[Origin, list[_PooledConnection]] = {}

    def statistics(self) -> dict[str, int]:
        return {"idle_connections": sum(len(v) for v in self._idle.values())}

    async def _connect(self, origin: Origin) -> _PooledConnection:
        try:
            with trio.fail_after(self._timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme == "https":
                    tls = trio.SSLStream(
                        stream,
                        self._ssl_context,
                        server_hostname=origin.host,
                        https_compatible=True,
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)  # the TCP stream under it
                        raise
                    stream = tls
        except trio.TooSlowError as exc:
            raise HttpClientError(f"connect to {origin.host}:{origin.port} timed out") from exc
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise HttpClientError(f"connect to {origin.host}:{origin.port} failed: {exc}") from exc
        return _PooledConnection(origin, stream)

    def _checkout(self, origin: Origin) -> _PooledConnection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.h11.our_state is h11.IDLE and conn.h11.their_state is h11.IDLE:
                conn.reused = True
                return conn
        return None

    async def _checkin(self, conn: _PooledConnection) -> None:
        state = conn.h11
        if state.our_state is not h11.IDLE or state.their_state is not h11.IDLE:
            try:  # a body read through h11 ends DONE; a raw one starts over IDLE already
                state.start_next_cycle()
            except h11.LocalProtocolError:
                await conn.aclose()
                return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            await conn.aclose()
            return
        idle.append(conn)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await conn.aclose()
        self._idle.clear()

    @asynccontextmanager
    async def request(
        self, method: str, url: str, headers: Headers, *, body: bytes = b""
    ) -> AsyncIterator[ClientResponse]:
        """Send a request (with a small in-memory `body`, for the Kubernetes API) and yield
        the response; the response body is read by the caller."""
        origin = Origin.from_url(url)
        target = request_target(url)
        all_headers = [(b"host", origin.host_header), *headers]
        if body and not any(k.lower() == b"content-length" for k, _ in headers):
            all_headers.append((b"content-length", str(len(body)).encode()))
        conn = self._checkout(origin)
        if conn is not None:
            try:
                event = await self._exchange(conn, method, target, all_headers, url, body)
            except HttpClientError as exc:
                # A pooled connection the server closed while idle: one fresh attempt.
                log.debug("stale pooled connection to %s: %s", url, exc)
                await conn.aclose()
                conn = None
            except BaseException:  # cancelled (a plan poll no longer needed) or worse
                await conn.aclose()
                raise
        if conn is None:
            conn = await self._connect(origin)
            try:
                event = await self._exchange(conn, method, target, all_headers, url, body)
            except BaseException:
                await conn.aclose()
                raise
        response = ClientResponse(conn, event, url, self._timeout)
        if method == "HEAD":
            # h11 frames a HEAD response as empty; collect its EndOfMessage now.
            try:
                async for _ in response.iter_body():
                    pass
            except BaseException:
                await conn.aclose()
                raise
        try:
            yield response
        except BaseException:
            await conn.aclose()
            raise
        if response.complete:
            await self._checkin(conn)
        else:
            await conn.aclose()

    async def _exchange(
        self,
        conn: _PooledConnection,
        method: str,
        target: bytes,
        headers: Headers,
        url: str,
        body: bytes = b"",
    ) -> h11.Response:
        try:
            data = conn.h11.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            with trio.fail_after(self._timeout):
                await conn.stream.send_all(data)
                while True:
                    event = conn.h11.next_event()
                    if event is h11.NEED_DATA:
                        chunk = await conn.stream.receive_some(RECEIVE_SIZE)
                        conn.h11.receive_data(chunk)
                        continue
                    if isinstance(event, h11.InformationalResponse):
                        continue
                    if isinstance(event, h11.Response):
                        return event
                    raise HttpClientError(f"{url}: connection closed before a response")
        except trio.TooSlowError as exc:
            raise HttpClientError(f"{url}: no response within {self._timeout}s") from exc
        except (OSError, trio.BrokenResourceError, ssl.SSLError, h11.ProtocolError) as exc:
            raise HttpClientError(f"{url}: {exc}") from exc
