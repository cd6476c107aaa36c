"""The sockets under the HTTP server: listening, a peer's address, bulk-transfer options."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import trio

log = logging.getLogger(__name__)

SEND_BUFFER = 4 << 20


def tune_for_bulk(stream: trio.abc.Stream) -> None:
    """Let the kernel queue a whole chunk: a 4 MiB send buffer, and no 16 KiB unsent limit.

    trio sets TCP_NOTSENT_LOWAT to 16 KiB on every socket stream, for interactive latency. Our
    answers are multi-MiB bodies: with it, a sendfile to a peer at 200 Mbit/s took 64 KiB per
    call and every 2.5 ms an event-loop turn, 1,600 turns per 8 s of uploads, which cost far
    more in Python than the copies. Without it one call mostly queues the whole chunk.
    """
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(inner, trio.SocketStream):
        return
    try:
        inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, SEND_BUFFER)
    except OSError as exc:  # not fatal: the defaults work, with more wake-ups
        log.debug("bulk socket options: %s", exc)


def peer_address(stream: trio.abc.Stream) -> tuple[str, int]:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return ("", 0)
    try:
        addr = sock.getpeername()
    except OSError:
        return ("", 0)
    return (str(addr[0]), int(addr[1]))


async def open_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    """Bind the port; an empty host, 0.0.0.0 or :: means every address on IPv4 and IPv6."""
    bind_host: str | None = None if host in ("", "0.0.0.0", "::") else host
    tcp = await trio.open_tcp_listeners(port, host=bind_host)
    if ssl_context is None:
        return list(tcp)
    return [trio.SSLListener(t, ssl_context, https_compatible=True) for t in tcp]


def _transport(listener: trio.abc.Listener[Any]) -> trio.abc.Listener[Any]:
    """The TCP listener under a TLS one (trio's SSLListener, or a `servingcert.TLSListener`,
    which both name it `transport_listener`)."""
    inner = getattr(listener, "transport_listener", None)
    return inner if isinstance(inner, trio.abc.Listener) else listener


def listener_port(listeners: list[trio.abc.Listener[Any]]) -> int:
    """The bound port (for port 0 in tests)."""
    first = _transport(listeners[0])
    assert isinstance(first, trio.SocketListener)
    return int(first.socket.getsockname()[1])


async def wait_pending(listener: trio.abc.Listener[Any]) -> None:
    """Return when a connection waits in the listener's backlog (its socket is readable)."""
    listener = _transport(listener)
    if isinstance(listener, trio.SocketListener):
        await trio.lowlevel.wait_readable(listener.socket)
    else:  # a listener without a socket (tests' in-memory ones): look again shortly
        await trio.sleep(0.05)
