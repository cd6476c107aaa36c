"""A chunk is read on a real loopback socket in reads that end where the pipelining hook asks
to hear next, so it hears when a transfer is about to end (not only that it ended) without a
read, and an event-loop turn, per 256 KiB of the chunk's end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from agent.http.client import HttpClient
from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners
from agent.http.tls import make_client_ssl_context
from agent.swarm.client import FIRST_LOOK, P2PClient

CHUNK = 4 << 20
DIGEST = "sha256:" + "a" * 64


async def fetch_paced(progress: Callable[[int], Awaitable[int | None]]) -> None:
    """The peer sends a 4 MiB chunk at about 100 Mbit/s (64 KiB per 5 ms)."""

    async def app(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(CHUNK // (64 << 10)):
                yield b"x" * (64 << 10)
                await trio.sleep(0.005)

        headers = [(b"content-length", str(CHUNK).encode())]
        return Response(status=200, headers=headers, body=body())

    async with trio.open_nursery() as nursery:
        listeners = await open_listeners("127.0.0.1", 0, None)
        await nursery.start(HttpServer(app, ServerSettings(), name="peer").serve, listeners)
        http = HttpClient(make_client_ssl_context(None), timeout=10)
        client = P2PClient(http, token=b"t", node="127.0.0.1:1", tls=False)
        buffer = bytearray(CHUNK)
        with trio.fail_after(20):
            await client.fetch_chunk(
                f"127.0.0.1:{listener_port(listeners)}",
                DIGEST,
                0,
                CHUNK,
                into=memoryview(buffer),
                progress=progress,
            )
        await http.aclose()
        nursery.cancel_scope.cancel()
    assert buffer == b"x" * CHUNK


async def test_the_progress_hook_hears_the_chunk_at_the_fill_it_asks_for() -> None:
    """A read wakes only once its whole view arrived (SO_RCVLOWAT): with 1 MiB views at
    100 Mbit/s the hook heard 3 MiB, then the end, never the last ~50 ms in which `finishing`
    should go. Now each read ends where the hook asks to hear next: here 300 KiB before the
    end, the moment it would say `finishing`."""
    heard: list[int] = []
    tell_at = CHUNK - (300 << 10)

    async def progress(filled: int) -> int | None:
        heard.append(filled)
        return tell_at if filled < tell_at else CHUNK

    await fetch_paced(progress)
    assert heard[0] == FIRST_LOOK and tell_at in heard and heard[-1] == CHUNK, heard
    assert len(heard) <= 4, heard  # asked three times: it hears three times (and no more)


async def test_a_hook_that_asks_for_nothing_hears_every_read() -> None:
    heard: list[int] = []

    async def progress(filled: int) -> None:
        heard.append(filled)

    await fetch_paced(progress)
    assert heard == sorted(heard) and heard[0] == FIRST_LOOK and heard[-1] == CHUNK, heard
