"""Bulk bodies on real loopback sockets: the kernel takes a whole chunk per send, and a reader
wakes per MiB received, not per packet, yet always for a body's last bytes.

The socket options behind this (TCP_NOTSENT_LOWAT, SO_SNDBUF, SO_RCVLOWAT) are what cut an
agent's event-loop turns per GiB several-fold; these tests pin their effect, not their values.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

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
    left, right = trio.testing.memory_stream_pair()
    sends: list[int] = []
    send_all = left.send_all

    async def counting(data: bytes | bytearray | memoryview) -> None:
        sends.append(len(data))
        await send_all(data)

    left.send_all = counting  # type: ignore[method-assign]

    async def app(request: Request) -> Response:
        return bytes_response(200, b'{"plan": 1}', JSON)

    server = HttpServer(app, ServerSettings(), name="t")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._serve_connection, left, 1, trio.CancelScope(), True)
        await right.send_all(b"GET /p2p/v1/plan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while not received.endswith(b'{"plan": 1}'):
                received += await right.receive_some(4096)
        nursery.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 200")
    assert len(sends) == 1, sends
