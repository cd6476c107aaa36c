"""Bulk bodies on real loopback sockets: the kernel takes a whole chunk per send, and a reader
wakes per MiB received, not per packet, yet always for a body's last bytes.

The socket options behind this (TCP_NOTSENT_LOWAT, SO_SNDBUF, SO_RCVLOWAT) are what cut an
agent's event-loop turns per GiB several-fold; these tests pin their effect, not their values.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
import trio.testing

from agent.http.client import RAW_LOW_WATER, HttpClient
from agent.http.responses import JSON, Response, bytes_response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners

BODY = 3 << 20


async def test_a_multi_mib_answer_is_queued_whole_while_the_client_is_not_reading() -> None:
    """With trio's default 16 KiB unsent limit the server would wait for the client to read
    (64 KiB per wake-up); tuned for bulk, the whole body is in the kernel at once."""
    handed_over = trio.Event()

    async def app(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"x" * BODY
            handed_over.set()

        return Response(status=200, headers=[(b"content-length", str(BODY).encode())], body=body())

    async with trio.open_nursery() as nursery:
        listeners = await open_listeners("127.0.0.1", 0, None)
        await nursery.start(HttpServer(app, ServerSettings(), name="t").serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", listener_port(listeners))
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(3):
            await handed_over.wait()  # not one byte read yet
        received = 0
        with trio.fail_after(10):
            while received < BODY:
                data = await stream.receive_some(1 << 20)
                assert data
                received += len(data)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_raw_body_read_wakes_per_mib_and_still_gets_its_last_bytes() -> None:
    """The reader asks the kernel to wake it only once 1 MiB waits; near the end of the body
    the mark drops to what is still owed, so a tail smaller than the mark arrives too (here
    it comes 0.3 s after the rest, on a keep-alive connection that never closes)."""
    tail = 1000

    async def app(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"a" * (BODY - tail)
            await trio.sleep(0.3)
            yield b"b" * tail

        return Response(status=200, headers=[(b"content-length", str(BODY).encode())], body=body())

    async with trio.open_nursery() as nursery:
        listeners = await open_listeners("127.0.0.1", 0, None)
        await nursery.start(HttpServer(app, ServerSettings(), name="t").serve, listeners)
        client = HttpClient(ssl.create_default_context(), timeout=5)
        url = f"http://127.0.0.1:{listener_port(listeners)}/big"
        buffer = memoryview(bytearray(BODY))
        marks = []
        with trio.fail_after(10):
            async with client.request("GET", url, []) as response:
                # Let the body's first part arrive whole: the reads below then do not depend
                # on how the server's sends and the reader's wake-ups interleave.
                await trio.sleep(0.15)
                filled = 0
                while filled < BODY:
                    n = await response.receive_into(buffer[filled:])
                    assert n
                    filled += n
                    sock = response._conn.stream.socket  # type: ignore[attr-defined]
                    marks.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))
        assert bytes(buffer[-tail:]) == b"b" * tail
        # (the first read may come from bytes that arrived with the head, not the socket)
        assert RAW_LOW_WATER in marks  # a multi-MiB body: wake per MiB
        assert min(marks) <= tail, marks  # the last bytes: no more than the body still owed
        nursery.cancel_scope.cancel()


async def test_a_small_answer_goes_out_with_its_head_in_one_send() -> None:
    """A plan reply or an error is a few hundred bytes: its head and body leave in one send
    (one system call, one event-loop turn), not two; a root answers thousands a second."""

    async def app(request: Request) -> Response:
        return bytes_response(200, b'{"plan": 1}', JSON)

    received, sends = await _exchange_counting_sends(app, "/p2p/v1/plan", len(b'{"plan": 1}'))
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b'{"plan": 1}')
    assert len(sends) == 1, [len(s) for s in sends]


async def test_a_streamed_answer_sends_its_head_in_one_piece() -> None:
    """A chunk served to a peer or a client: its head (status and five headers) leaves in one
    send and each body piece in one more; h11 hands a head over line by line, and sending the
    lines one by one cost a system call and an event-loop turn each."""
    piece = b"x" * (64 << 10)

    async def body() -> AsyncIterator[bytes]:
        yield piece
        yield piece

    async def app(request: Request) -> Response:
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(2 * len(piece)).encode()),
            (b"docker-content-digest", b"sha256:" + b"0" * 64),
            (b"accept-ranges", b"bytes"),
        ]
        return Response(status=200, headers=headers, body=body())

    received, sends = await _exchange_counting_sends(app, "/blob", 2 * len(piece))
    head = received[: received.index(b"\r\n\r\n") + 4]
    assert sends == [head, piece, piece], [len(s) for s in sends]


async def _exchange_counting_sends(
    app: Callable[[Request], Awaitable[Response]], target: str, body_length: int
) -> tuple[bytes, list[bytes]]:
    """One request to `app` through a real server connection over a memory stream: what the
    client received (head and `body_length` bytes of body), and each send the server made."""
    left, right = trio.testing.memory_stream_pair()
    sends: list[bytes] = []
    send_all = left.send_all

    async def counting(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        await send_all(data)

    left.send_all = counting  # type: ignore[method-assign]
    server = HttpServer(app, ServerSettings(), name="t")
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._serve_connection, left, 1, trio.CancelScope(), True)
        await right.send_all(request.encode())
        received = b""
        with trio.fail_after(5):
            while len(received.partition(b"\r\n\r\n")[2]) < body_length:
                received += await right.receive_some(1 << 20)
        nursery.cancel_scope.cancel()
    return received, sends


async def _read_raw(client: HttpClient, url: str, size: int) -> bytes:
    buffer = memoryview(bytearray(size))
    async with client.request("GET", url, []) as response:
        assert response.status == 200
        filled = 0
        while filled < size:  # in MiB views: the last read's wake-up mark is far above a head
            n = await response.receive_into(buffer[filled : filled + (1 << 20)])
            assert n
            filled += n
        assert await response.receive_into(buffer[:1]) == 0
    return bytes(buffer)


async def _serve_counting(
    nursery: trio.Nursery, conn_ids: list[int], *, close: bool = False, delay: float = 0.0
) -> str:
    """A server whose bodies are BODY bytes of the request's connection id, answering after
    `delay` (so a reader waits for the head), with `Connection: close` when `close`."""

    async def app(request: Request) -> Response:
        conn_ids.append(request.conn_id)
        await trio.sleep(delay)
        if request.target == "/small":
            return bytes_response(404, b"no such chunk", JSON)
        headers = [(b"content-length", str(BODY).encode())]
        if close:
            headers.append((b"connection", b"close"))
        return Response(status=200, headers=headers, body=bytes([request.conn_id % 256]) * BODY)

    listeners = await open_listeners("127.0.0.1", 0, None)
    await nursery.start(HttpServer(app, ServerSettings(), name="t").serve, listeners)
    return f"http://127.0.0.1:{listener_port(listeners)}/chunk"


async def test_raw_bodies_read_to_their_end_reuse_one_connection() -> None:
    """A swarm agent reads every chunk as a raw body: read to its last byte, the connection
    goes back to the pool at a message boundary (it used to be closed: a connect, an accept
    and a close per chunk at both ends). A small answer comes late on it after a body, so
    it is waited for on a socket whose wake-up mark must be back at one byte, or the read
    would sleep until the timeout."""
    conn_ids: list[int] = []
    async with trio.open_nursery() as nursery:
        url = await _serve_counting(nursery, conn_ids, delay=0.3)
        client = HttpClient(ssl.create_default_context(), timeout=5)
        with trio.fail_after(4):  # a head waiting behind a stale mark: 5 s, then an error
            bodies = [await _read_raw(client, url, BODY) for _ in range(2)]
            async with client.request("GET", url.replace("/chunk", "/small"), []) as small:
                assert await small.read_all(100) == b"no such chunk"
            bodies.append(await _read_raw(client, url, BODY))
        assert len(set(conn_ids)) == 1, conn_ids
        assert all(body == bytes([conn_ids[0] % 256]) * BODY for body in bodies), "wrong bytes"
        assert client.statistics()["idle_connections"] == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_raw_body_whose_server_closes_is_not_pooled() -> None:
    conn_ids: list[int] = []
    async with trio.open_nursery() as nursery:
        url = await _serve_counting(nursery, conn_ids, close=True)
        client = HttpClient(ssl.create_default_context(), timeout=5)
        with trio.fail_after(10):
            for _ in range(2):
                await _read_raw(client, url, BODY)
        assert len(set(conn_ids)) == 2, conn_ids
        assert client.statistics()["idle_connections"] == 0
        nursery.cancel_scope.cancel()
