"""Target: what a client sends on the proxy, P2P or webhook port, through h11 and the server's
own head checks (`agent.http.connection.check_head`, `request_from_head`).

The input is the byte stream of one connection: its first byte is the size of each read
(0: all at once), the rest is what the client sends, then EOF. Request cycles run as
`HttpConnection` runs them, without a socket: a head, its body dropped (bounded, 413 past
MAX_REQUEST_BODY), a small answer, the next cycle; pipelined requests included.

Contract: the only error is h11.RemoteProtocolError, whose status hint is a 4xx/5xx the
server can answer with (the answer itself must encode); an accepted head is within
MAX_HEADER_BYTES however it was split, and becomes a `Request` whose method and target are
visible ASCII (they go into log lines and route parsers as they are).
"""

from __future__ import annotations

from collections import deque

import h11

from agent.http.connection import MAX_REQUEST_BODY, TLS_HANDSHAKE_BYTE, check_head
from agent.http.responses import PLAIN_TEXT, Response, bytes_response, plain_error
from agent.http.server import MAX_HEADER_BYTES, request_from_head

MAX_CYCLES = 64  # pipelined requests per input


def fuzz_one(data: bytes) -> None:
    """One connection's bytes through the server's request cycles."""
    if not data:
        return
    piece = data[0] or len(data)
    stream = data[1:]
    reads = deque(stream[i : i + piece] for i in range(0, len(stream), piece))
    if reads and reads[0][:1] == bytes([TLS_HANDSHAKE_BYTE]):
        return  # TLS on a plain port: closed before h11 sees a byte
    reads.append(b"")  # EOF
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    for _ in range(MAX_CYCLES):
        if not _one_cycle(conn, reads):
            return


def _one_cycle(conn: h11.Connection, reads: deque[bytes]) -> bool:
    """Like HttpServer._run_cycles' loop body: False when the connection ends."""
    head_only = False  # as HttpConnection.head_request: a refused HEAD is answered head only
    try:
        event = _next_head(conn, reads)
        if event is not None:
            head_only = event.method == b"HEAD"
            check_head(event, MAX_HEADER_BYTES)
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint
        assert 400 <= status <= 599, f"status hint {status} for {exc!r}"
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            message = "request header too large" if status == 431 else f"bad request: {exc}"
            _send(conn, plain_error(status, message), head_only=head_only)
        return False
    if event is None:
        return False
    _check_request(event)
    try:
        _drop_body(conn, reads)
    except h11.RemoteProtocolError as exc:  # 413, or a malformed body (chunk framing): 400
        assert 400 <= exc.error_status_hint <= 599, repr(exc)
        _send(conn, plain_error(exc.error_status_hint, str(exc)), head_only=head_only)
        return False
    _send(conn, bytes_response(200, b"ok\n", PLAIN_TEXT), head_only=head_only)
    if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
        return False
    try:
        conn.start_next_cycle()
    except h11.LocalProtocolError:
        return False
    return True


def _next_head(conn: h11.Connection, reads: deque[bytes]) -> h11.Request | None:
    """Like HttpConnection.next_request, but for `check_head`, which the caller applies (it
    must know the method of a head that fails it); running out of reads is the timeout."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.their_state is h11.DONE or not reads:
                return None
            conn.receive_data(reads.popleft())
            continue
        if isinstance(event, h11.Request):
            return event
        return None


def _check_request(event: h11.Request) -> None:
    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
    assert size <= MAX_HEADER_BYTES, f"a head of {size} bytes was let through"
    request = request_from_head(event, client=("127.0.0.1", 40000), conn_id=1, tls=False)
    for text in (request.method, request.target):
        assert text and all("\x21" <= c <= "\x7e" for c in text), f"not visible ASCII: {text!r}"
    assert all(name == name.lower() for name, _ in request.headers)
    for name in ("host", "range", "authorization"):
        value = request.header(name)
        assert value is None or isinstance(value, str)


def _drop_body(conn: h11.Connection, reads: deque[bytes]) -> None:
    """Like HttpConnection.read_body(0): read and drop, 413 past MAX_REQUEST_BODY."""
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if not reads:
                return
            conn.receive_data(reads.popleft())
            continue
        if isinstance(event, h11.Data):
            received += len(event.data)
            if received > MAX_REQUEST_BODY:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            continue
        return


def _send(conn: h11.Connection, response: Response, *, head_only: bool) -> None:
    """Encode the answer as HttpConnection.send_response does; the bytes go nowhere."""
    assert isinstance(response.body, bytes)
    conn.send(h11.Response(status_code=response.status, headers=response.headers))
    if response.body and not head_only:
        conn.send(h11.Data(data=response.body))
    conn.send(h11.EndOfMessage())
