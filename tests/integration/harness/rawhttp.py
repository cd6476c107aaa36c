"""One raw HTTP request to a loopback server, keeping what a client library would hide.

`raw_request` sends each header as its own line (a list of pairs, so a name may repeat),
and returns the status, every response header line, the body, and whether the body was
complete: a response cut short (fewer bytes than its Content-Length, which `http.client`
reports as IncompleteRead) comes back with `complete=False` and the partial bytes, so a
test can assert on it instead of dying on the exception.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from .procs import assert_loopback_url


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # every line, names lower-cased, in order
    body: bytes
    complete: bool  # False: the connection ended before Content-Length bytes arrived
    content_length: int | None

    def header(self, name: str) -> str | None:
        lines = self.header_lines(name)
        return lines[0] if lines else None

    def header_lines(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self.headers if k == key]

    def json(self) -> dict:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        """The `code`s of a registry JSON error body (`{"errors": [{"code": ...}]}`)."""
        return [e.get("code") for e in self.json().get("errors", [])]

    def error_text(self) -> str:
        """Every error's code, message and detail, for "the message names X" assertions."""
        return " ".join(
            f"{e.get('code')}: {e.get('message')} {e.get('detail') or ''}"
            for e in self.json().get("errors", [])
        )

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


def raw_request(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    read_limit: int | None = None,
) -> RawResponse:
    """Send one request (no body) and read the whole response, or what arrived of it.

    `read_limit` stops reading after that many body bytes (the rest is discarded with the
    connection).
    """
    scheme = "https" if ssl_context else "http"
    assert_loopback_url(f"{scheme}://{host}:{port}/")
    if ssl_context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl_context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        lines = tuple((k.lower(), v) for k, v in resp.getheaders())
        length_text = resp.getheader("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        complete = True
        try:
            body = resp.read() if read_limit is None else resp.read(read_limit)
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        if method != "HEAD" and length is not None and read_limit is None:
            complete = complete and len(body) == length
        return RawResponse(resp.status, lines, body, complete, length)
    finally:
        conn.close()
