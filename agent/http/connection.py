"""One HTTP/1.1 server connection: h11's state plus the stream (the dozen-line adapter of
h11's trio example), grown the bounds a port facing hostile clients needs: a deadline for the
whole request head, bounded bodies, a send deadline counted in SEND_STEP bytes (a minimum rate,
not merely some progress), sendfile(2) for file regions, and a body written straight to the
socket so a multi-MiB chunk costs one event-loop turn. `HttpServer` (agent/http/server.py)
owns the connections and the application; this module only moves bytes and h11 events.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING

import h11
import trio

from agent.http.limits import PortLimits
from agent.http.responses import FileRegion, Response

if TYPE_CHECKING:
    from agent.http.server import ServerSettings

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 64 * 1024  # pull-only API: bodies are never expected, only discarded
RECEIVE_SIZE = 64 * 1024
TLS_HANDSHAKE_BYTE = 0x16


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


SEND_STEP = 1 << 20  # bytes handed to the kernel under one send deadline
SMALL_BODY = 64 << 10  # a bytes body up to this size goes out with its head in one send
SMALL_PIECE = 4 << 10  # h11 pieces up to this size are joined before they are sent


Piece = bytes | bytearray | memoryview | FileRegion


def coalesce(pieces: Iterator[Piece] | list[Piece]) -> list[Piece]:
    """h11's pieces for one event with the small ones joined: with data passthrough h11 hands
    a response head over line by line, and each line sent alone cost a write(2) and an
    event-loop turn, eight per chunk served. Large pieces (a chunk's bytes, a file region)
    pass as they are: joining them would copy them."""
    out: list[Piece] = []
    small: list[bytes | bytearray | memoryview] = []
    for piece in pieces:
        if isinstance(piece, FileRegion) or len(piece) > SMALL_PIECE:
            if small:
                out.append(b"".join(small))
                small = []
            out.append(piece)
        elif piece:
            small.append(piece)
    if small:
        out.append(b"".join(small))
    return out


class HttpConnection:
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
        pieces = coalesce(self.h11.send_with_data_passthrough(event) or ())
        throttle = self.settings.throttle
        if throttle is not None and isinstance(event, h11.Data):
            await throttle(len(event.data))
        try:
            for piece in pieces:
                if isinstance(piece, FileRegion):
                    await self._send_region(piece)
                else:
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
