"""The response shapes every port uses (agent/http/responses.py), and that the server frames
them: an exact Content-Length, so the connection stays usable for the next request."""

from __future__ import annotations

import json

import h11
import trio

from agent.http.responses import (
    JSON,
    PLAIN_TEXT,
    Response,
    bytes_response,
    json_response,
    plain_error,
)
from agent.http.server import HttpServer, Request, ServerSettings, listener_port, open_listeners


def header(response: Response, name: bytes) -> list[bytes]:
    return [v for k, v in response.headers if k == name]


def test_json_response_is_indented_json_with_its_length() -> None:
    response = json_response(503, {"status": "not ready", "n": [1, 2]})
    assert response.status == 503
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"status": "not ready", "n": [1, 2]}
    assert response.body == b'{\n "status": "not ready",\n "n": [\n  1,\n  2\n ]\n}\n'
    assert header(response, b"content-type") == [JSON]
    assert header(response, b"content-length") == [str(len(response.body)).encode()]


def test_extra_headers_follow_the_framing_ones_in_order() -> None:
    extra = [(b"docker-distribution-api-version", b"registry/2.0"), (b"x-a", b"1"), (b"x-a", b"2")]
    response = json_response(200, {}, extra)
    assert [k for k, _ in response.headers] == [
        b"content-type",
        b"content-length",
        b"docker-distribution-api-version",
        b"x-a",
        b"x-a",
    ]
    assert header(response, b"x-a") == [b"1", b"2"]


def test_plain_error_is_one_line_of_text() -> None:
    response = plain_error(404, "chunk 3 of sha256:ab is not here")
    assert (response.status, response.body) == (404, b"chunk 3 of sha256:ab is not here\n")
    assert header(response, b"content-type") == [PLAIN_TEXT]
    assert header(response, b"content-length") == [b"33"]


def test_bytes_response_keeps_the_bytes_and_type_it_is_given() -> None:
    body = b'{"compact":true}'  # e.g. a plan's canonical encoding: not re-encoded
    response = bytes_response(200, body, JSON)
    assert response.body is body
    assert response.headers == [(b"content-type", JSON), (b"content-length", b"16")]


async def test_each_shape_leaves_a_keep_alive_connection_usable() -> None:
    answers = {
        "/json": json_response(200, {"status": "ready"}),
        "/error": plain_error(401, "unauthorized"),
        "/bytes": bytes_response(200, b"\x00\x01", b"application/octet-stream"),
    }

    async def app(request: Request) -> Response:
        return answers[request.target]

    server = HttpServer(app, ServerSettings(), name="test")
    listeners = await open_listeners("127.0.0.1", 0, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", listener_port(listeners))
        client = h11.Connection(h11.CLIENT)
        for target, answer in answers.items():  # one connection, one request after another
            request = h11.Request(method="GET", target=target, headers=[("host", "x")])
            await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
            status, body = 0, b""
            with trio.fail_after(5):
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
            assert (status, body) == (answer.status, answer.body), target
            client.start_next_cycle()
        await stream.aclose()
        nursery.cancel_scope.cancel()
