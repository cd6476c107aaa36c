"""The h11 server on real loopback sockets: framing, limits, timeouts, cut-off bodies, drain."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import trio

from agent.http.limits import Limits
from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners


async def app(request: Request) -> Response:
    if request.target == "/stream-then-fail":

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 100
            raise RuntimeError("bytes did not verify")

        return Response(status=200, headers=[(b"content-length", b"1000")], body=body())
    if request.target == "/slow":
        await trio.sleep(0.5)
    if request.target == "/big":  # 64 MiB: more than the kernel buffers of a client that stalls

        async def big() -> AsyncIterator[bytes]:
            piece = b"b" * (1 << 20)
            for _ in range(64):
                yield piece

        return Response(status=200, headers=[(b"content-length", b"%d" % (64 << 20))], body=big())
    if request.target == "/accept":
        lines = b"|".join(request.header_lines("accept"))
        return Response(
            status=200, headers=[(b"content-length", str(len(lines)).encode())], body=lines
        )
    body = f"hello {request.method} {request.target}".encode()
    return Response(status=200, headers=[(b"content-length", str(len(body)).encode())], body=body)


async def start(nursery: trio.Nursery, **settings: Any) -> tuple[HttpServer, int]:
    server = HttpServer(app, ServerSettings(**settings), name="test")
    listeners = await open_listeners("127.0.0.1", 0, None)
    await nursery.start(server.serve, listeners)
    return server, listener_port(listeners)


async def exchange(port: int, raw: bytes, *, read_until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(raw)
    out = b""
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            out += data
            if not read_until_close and b"\r\n\r\n" in out:
                break
    await stream.aclose()
    return out


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        raw = (
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out = await exchange(port, raw)
        assert out.count(b"HTTP/1.1 200") == 2
        assert b"hello GET /a" in out and b"hello GET /b" in out
        nursery.cancel_scope.cancel()


async def test_repeated_header_lines_stay_separate() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        raw = (
            b"GET /accept HTTP/1.1\r\nHost: x\r\nAccept: a/one\r\nAccept: b/two\r\n"
            b"Connection: close\r\n\r\n"
        )
        out = await exchange(port, raw)
        assert out.endswith(b"a/one|b/two")
        nursery.cancel_scope.cancel()


async def test_oversized_headers_get_431() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
        out = await exchange(port, raw)
        assert out.startswith(b"HTTP/1.1 431")
        nursery.cancel_scope.cancel()


async def test_garbage_gets_400() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        out = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()


async def test_tls_hello_on_plain_port_is_closed_cleanly() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        out = await exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40)
        assert out == b""
        # and the server still answers afterwards
        out = await exchange(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


async def test_streamed_body_that_fails_is_cut_short() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        out = await exchange(port, b"GET /stream-then-fail HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"content-length: 1000" in head.lower()
        assert body == b"x" * 100  # closed after 100 of 1000 bytes: the client sees a short body
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_idle_timeout() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery, idle_timeout=0.3)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
        nursery.cancel_scope.cancel()


async def test_partial_head_is_closed_after_read_timeout() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery, read_timeout=0.3, idle_timeout=30)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
        nursery.cancel_scope.cancel()


async def test_head_response_has_no_body() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        out = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""
        nursery.cancel_scope.cancel()


async def test_drain_finishes_request_in_flight_and_stops_accepting() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start(nursery)
        result: list[bytes] = []

        async def slow_client() -> None:
            result.append(
                await exchange(port, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            )

        nursery.start_soon(slow_client)
        with trio.fail_after(5):
            while server.statistics()["active_requests"] == 0:
                await trio.sleep(0.01)
        await server.drain(grace=5)
        with trio.fail_after(5):
            while not result:
                await trio.sleep(0.01)
        assert result[0].startswith(b"HTTP/1.1 200")
        try:
            await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = False
        except OSError:
            refused = True
        assert refused, "a drained server must not accept new connections"
        nursery.cancel_scope.cancel()


async def receive_until(stream: trio.abc.Stream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(5):
        while marker not in data:
            piece = await stream.receive_some(65536)
            if not piece:
                break
            data += piece
    return data


async def test_at_the_port_limit_a_busy_connection_holds_the_next_in_the_backlog() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery, limits=Limits(max_connections=1))
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.1)  # its handler runs: neither idle nor stalled
        second = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel accepts it...
        await second.send_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with trio.move_on_after(0.2) as waited:
            got = await second.receive_some(65536)
        assert waited.cancelled_caught, f"...but the server must not serve it yet {got!r}"
        assert b"hello GET /slow" in await receive_until(first, b"hello GET /slow")
        assert b"hello GET /b" in await receive_until(second, b"hello GET /b")
        await first.aclose()
        await second.aclose()
        nursery.cancel_scope.cancel()


async def test_at_the_port_limit_an_idle_keep_alive_is_reclaimed_for_a_newcomer() -> None:
    """256 idle connections took every P2P slot (issue 13): idle ones now give way."""
    hits: list[str] = []
    async with trio.open_nursery() as nursery:
        server, port = await start(nursery, limits=Limits(max_connections=2), on_limit=hits.append)
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await idle[0].send_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello GET /a" in await receive_until(idle[0], b"hello GET /a")
        await trio.sleep(0.1)  # idle[1] never sent a byte; idle[0] is a keep-alive
        late = await trio.open_tcp_stream("127.0.0.1", port)
        await late.send_all(b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"hello GET /late" in await receive_until(late, b"hello GET /late")
        with trio.fail_after(5):  # the one that waited longest (never sent a byte) was closed
            assert await idle[1].receive_some(65536) == b""
        assert hits == ["idle_reclaimed"]
        assert server.statistics()["limit_hits"] == {"idle_reclaimed": 1}
        for stream in (*idle, late):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_address_over_its_limit_is_refused_while_others_are_served() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery, limits=Limits(max_client_connections=1))
        busy = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
        await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.1)
        refused = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
        with trio.fail_after(5):
            assert await refused.receive_some(65536) == b"", "closed at once"
        other = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3")
        await other.send_all(b"GET /o HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"hello GET /o" in await receive_until(other, b"hello GET /o")
        assert b"hello GET /slow" in await receive_until(busy, b"hello GET /slow")
        for stream in (busy, refused, other):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def stalled_reader(port: int, source: str = "127.0.0.1") -> trio.SocketStream:
    """A client that asks for 64 MiB and never reads: its send stalls once buffers fill."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream


async def read_all(stream: trio.SocketStream) -> int:
    total = 0
    with trio.fail_after(20):
        while data := await stream.receive_some(1 << 20):
            total += len(data)
    return total


async def test_a_client_that_stops_reading_is_cut_after_the_send_timeout() -> None:
    """60 clients that never read held 276 MiB and their connections for good (issue 13)."""
    hits: list[str] = []
    async with trio.open_nursery() as nursery:
        server, port = await start(nursery, send_timeout=0.5, on_limit=hits.append)
        stream = await stalled_reader(port)
        with trio.fail_after(10):
            while "send_timeout" not in hits:
                await trio.sleep(0.05)
            while server.statistics()["connections"]:  # its buffer and its slot are free
                await trio.sleep(0.05)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_body_waiting_for_a_slot_reclaims_a_send_stalled_past_the_grace() -> None:
    hits: list[str] = []
    async with trio.open_nursery() as nursery:
        server, port = await start(nursery, limits=Limits(max_responses=1), on_limit=hits.append)
        stalled = await stalled_reader(port)
        await trio.sleep(0.2)
        assert server.statistics()["responses"] == 1
        started = trio.current_time()
        reader = await trio.open_tcp_stream("127.0.0.1", port)
        await reader.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert await read_all(reader) > 64 << 20  # the head and the whole body
        assert trio.current_time() - started < 10
        assert "responses" in hits and "stalled_reclaimed" in hits
        await stalled.aclose()
        await reader.aclose()
        nursery.cancel_scope.cancel()


async def test_a_flooding_address_holds_half_the_slots_and_another_is_served_at_once() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start(nursery, limits=Limits(max_responses=4))
        flood = [await stalled_reader(port, "127.0.0.66") for _ in range(5)]
        await trio.sleep(0.3)
        stats = server.statistics()
        assert stats["responses"] == 2 and stats["waiting_for_response"] == 3
        reader = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.7")
        await reader.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with trio.fail_after(1.5):  # before any stalled send may be reclaimed (STALL_GRACE)
            assert await read_all(reader) > 64 << 20
        for stream in (*flood, reader):
            await stream.aclose()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------------
# Request bodies (the webhook's POSTs) and the request log


async def echo_body(request: Request) -> Response:
    body = f"{request.method} {len(request.body)} {request.body[:16]!r}".encode()
    return Response(status=200, headers=[(b"content-length", str(len(body)).encode())], body=body)


async def start_echo(nursery: trio.Nursery, **settings: int) -> tuple[HttpServer, int]:
    server = HttpServer(echo_body, ServerSettings(**settings), name="test")
    listeners = await open_listeners("127.0.0.1", 0, None)
    await nursery.start(server.serve, listeners)
    return server, listener_port(listeners)


def post(body: bytes, *, close: bool = True) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST /mutate HTTP/1.1\r\nHost: x\r\n"
        + connection
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_bodies_reach_the_handler_when_allowed() -> None:
    async with trio.open_nursery() as nursery:
        _server, port = await start_echo(nursery, max_request_body=200_000)
        out = await exchange(port, post(b"y" * 150_000))
        assert out.startswith(b"HTTP/1.1 200") and b"POST 150000 b'yyyy" in out
        nursery.cancel_scope.cancel()


async def test_body_over_the_limit_gets_413_and_the_server_lives_on() -> None:
    for settings in ({"max_request_body": 1000}, {}):  # the webhook's limit; the proxy's 64 KiB
        async with trio.open_nursery() as nursery:
            _server, port = await start_echo(nursery, **settings)
            out = await exchange(port, post(b"z" * 100_000))
            assert out.startswith(b"HTTP/1.1 413")
            out = await exchange(
                port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert out.startswith(b"HTTP/1.1 200")
            nursery.cancel_scope.cancel()


async def test_without_the_setting_bodies_are_dropped() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_echo(nursery)
        out = await exchange(port, post(b"q" * 1000))
        assert out.startswith(b"HTTP/1.1 200") and b"POST 0 b''" in out
        stats = server.statistics()
        assert stats["requests"] == 1 and stats["recent_requests"] == ["POST /mutate"]
        nursery.cancel_scope.cancel()


async def test_every_request_is_reported_with_its_body_bytes() -> None:
    seen: list[tuple[int, int, float]] = []

    def on_request(status: int, size: int, seconds: float) -> None:
        seen.append((status, size, seconds))

    async with trio.open_nursery() as nursery:
        server = HttpServer(app, ServerSettings(on_request=on_request), name="test")
        listeners = await open_listeners("127.0.0.1", 0, None)
        await nursery.start(server.serve, listeners)
        port = listener_port(listeners)
        await exchange(port, b"GET /abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await exchange(port, b"HEAD /abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await exchange(port, b"GET /stream-then-fail HTTP/1.1\r\nHost: x\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert [(status, size) for status, size, _ in seen] == [
        (200, len(b"hello GET /abc")),
        (200, 0),  # HEAD: no body
        (200, 100),  # cut short after 100 bytes
    ]
    assert all(seconds >= 0 for _, _, seconds in seen)


async def test_connect_gets_405_and_the_connection_closes() -> None:
    # Found by fuzz/http_head.py: a 2xx answer to CONNECT switches h11 to a tunnel, so the
    # answer's body could not be sent and the client got nothing (the webhook answers 200 on
    # /healthz whatever the method). No port of Pollen is a forward proxy.
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        out = await exchange(port, b"CONNECT /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 405")
        assert b"CONNECT" in out
        nursery.cancel_scope.cancel()


async def test_errors_to_head_requests_are_answered_without_a_body() -> None:
    # Found by fuzz/http_head.py: the error answer carried its body, which h11 refuses after
    # a HEAD, so a HEAD with a bad body or an oversized head got no answer at all.
    async with trio.open_nursery() as nursery:
        _server, port = await start(nursery)
        bad_body = b"HEAD /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        big_head = b"HEAD /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
        for raw, status in ((bad_body, b"400"), (big_head, b"431")):
            out = await exchange(port, raw)
            assert out.startswith(b"HTTP/1.1 " + status), out
            assert out.endswith(b"\r\n\r\n")  # the head alone
        nursery.cancel_scope.cancel()
