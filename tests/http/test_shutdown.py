"""Stopping a serving process (agent/http/shutdown.py): the signals, then the drain."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from agent.http.responses import Response
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners
from agent.http.shutdown import STOP_SIGNALS, drain, wait_for_stop


class signals_of:  # noqa: N801 - reads like the generator it replaces
    """Signal numbers as a receiver yields them; a plain iterator, so nothing is left for the
    garbage collector to finalize when the wait stops early."""

    def __init__(self, *numbers: int) -> None:
        self._numbers = iter(numbers)

    def __aiter__(self) -> signals_of:
        return self

    async def __anext__(self) -> int:
        try:
            return next(self._numbers)
        except StopIteration:
            raise StopAsyncIteration from None


async def test_the_first_stop_signal_ends_the_wait() -> None:
    got = await wait_for_stop(signals_of(signal.SIGINT, signal.SIGTERM))
    assert got == signal.SIGINT


async def test_hangups_run_the_hangup_action_and_the_wait_goes_on() -> None:
    hangups: list[int] = []

    async def reopen() -> None:
        hangups.append(1)

    got = await wait_for_stop(
        signals_of(signal.SIGHUP, signal.SIGHUP, signal.SIGTERM), on_hangup=reopen
    )
    assert (got, len(hangups)) == (signal.SIGTERM, 2)


async def test_without_a_hangup_action_sighup_stops_like_the_others() -> None:
    assert await wait_for_stop(signals_of(signal.SIGHUP, signal.SIGTERM)) == signal.SIGHUP


async def test_a_receiver_that_ends_without_a_stop_signal_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        await wait_for_stop(signals_of())


async def test_a_real_sigterm_is_caught_while_the_receiver_is_open() -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test run if not caught
        with trio.fail_after(5):
            assert await wait_for_stop(signals) == signal.SIGTERM


async def slow(request: Request) -> Response:
    await trio.sleep(float(request.target.strip("/")))
    return Response(status=200, headers=[(b"content-length", b"2")], body=b"ok")


async def start_with_request(nursery: trio.Nursery, seconds: float) -> HttpServer:
    """A server with one request in flight that takes `seconds` to answer."""
    server = HttpServer(slow, ServerSettings(), name=f"slow-{seconds}")
    listeners = await open_listeners("127.0.0.1", 0, None)
    await nursery.start(server.serve, listeners)
    stream = await trio.open_tcp_stream("127.0.0.1", listener_port(listeners))
    await stream.send_all(f"GET /{seconds} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    while not server.statistics()["active_requests"]:
        await trio.sleep(0.01)
    return server


async def test_drain_waits_for_every_server_at_once_within_the_grace() -> None:
    async with trio.open_nursery() as nursery:
        quick = await start_with_request(nursery, 0.3)
        stuck = await start_with_request(nursery, 30)
        started = trio.current_time()
        await drain([quick, stuck], grace=1.0)
        took = trio.current_time() - started
        assert quick.draining and stuck.draining
        assert quick.statistics()["active_requests"] == 0  # finished inside the grace
        assert stuck.statistics()["active_requests"] == 1  # left for the caller to cancel
        assert 0.9 <= took < 1.5  # one grace for both, not one each
        nursery.cancel_scope.cancel()


async def test_drain_of_idle_servers_returns_at_once() -> None:
    servers = [HttpServer(slow, ServerSettings(), name=str(n)) for n in range(3)]
    with trio.fail_after(0.5):
        await drain(servers, grace=10)
    assert all(s.draining for s in servers)
