"""What an application answers on any of our ports: `Response`, and the few shapes every port
uses -- a JSON document, a plain-text error, bytes of a known type.

These lived in each front end (the registry proxy, the webhook, the P2P server, the exporter)
as near copies; one home keeps the framing identical everywhere: every body built here has
an exact Content-Length, so keep-alive connections stay usable after any of them. `Headers`
is here too, the one spelling of a header list (lower-case names, repeated names kept as
separate lines) that the server, the client and the registry code share.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


def header_value(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    """The first value of a header (names compared case-insensitively; h11 lower-cases)."""
    key = name.lower().encode()
    for k, v in headers:
        if k == key:
            return v.decode("latin-1")
    return None


def header_lines(headers: Sequence[tuple[bytes, bytes]], name: str) -> list[bytes]:
    """Every value of a header, one per line, in order."""
    key = name.lower().encode()
    return [v for k, v in headers if k == key]


JSON = b"application/json"
PLAIN_TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, kw_only=True)
class FileRegion:
    """Bytes of an open file to send as (part of) a body: with sendfile on plain TCP, so a
    cached chunk goes from the page cache to the socket without passing through Python.

    h11 frames it like any other Data payload (it only needs ``len()``; that is what
    ``send_with_data_passthrough`` is for); the caller owns the fd and keeps it open until
    the body is done.
    """

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


Body = bytes | AsyncIterator[bytes | memoryview | FileRegion]


@dataclass(kw_only=True)
class Response:
    """What the application answers; a streamed body must match its Content-Length."""

    status: int
    headers: Headers = field(default_factory=list)
    body: Body = b""


def bytes_response(
    status: int, body: bytes, content_type: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> Response:
    """A whole body in memory: Content-Type, Content-Length, then `extra` headers."""
    return Response(
        status=status,
        headers=[
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ],
        body=body,
    )


def json_response(
    status: int, payload: object, extra: Sequence[tuple[bytes, bytes]] = ()
) -> Response:
    """`payload` as JSON, indented and newline-terminated: these documents (health, status,
    admission answers) are read by people with curl as often as by programs."""
    body = json.dumps(payload, indent=1).encode() + b"\n"
    return bytes_response(status, body, JSON, extra)


def plain_error(status: int, message: str, *, close: bool = False) -> Response:
    """A one-line text answer: the HTTP layer's own errors (400, 413, 431, 500) and the
    ports that have no richer error shape (P2P, the exporter); `close` ends the connection
    after it (a caller that failed to authenticate keeps no slot)."""
    extra = [(b"connection", b"close")] if close else []
    return bytes_response(status, (message + "\n").encode(), PLAIN_TEXT, extra)
