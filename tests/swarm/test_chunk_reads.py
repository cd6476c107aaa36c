"""A chunk's last bytes are read in small pieces on a real loopback socket, so that the
pipelining hook hears when a transfer is about to end (not only that it ended)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from agent.http.client import HttpClient
from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners
from agent.http.tls import make_client_ssl_context
from agent.swarm.client import FINE_READ, P2PClient

CHUNK = 4 << 20
DIGEST = "sha256:" + "a" * 64


async def test_the_progress_hook_hears_a_transfer_within_a_fine_read_of_its_end() -> None:
    """The peer sends a 4 MiB chunk at about 100 Mbit/s. A read wakes only once its whole view
    arrived (SO_RCVLOWAT), so with 1 MiB views the hook heard 3 MiB, then the end: never the
    last ~50 ms in which `finishing` should go. The tail is read in FINE_READ pieces."""

    async def app(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(CHUNK // (64 << 10)):
                yield b"x" * (64 << 10)
                await trio.sleep(0.005)  # 64 KiB per 5 ms: ~100 Mbit/s

        headers = [(b"content-length", str(CHUNK).encode())]
        return Response(status=200, headers=headers, body=body())

    heard: list[int] = []

    async def progress(filled: int) -> None:
        heard.append(filled)

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
    assert heard[-1] == CHUNK
    assert any(0 < CHUNK - filled <= FINE_READ for filled in heard), heard
