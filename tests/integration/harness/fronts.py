"""Small HTTP servers that stand between the agent and a real registry, on loopback.

- `RegistryFront` forwards every request to a real registry with `http.client`, each
  header line kept as its own line, and records what it received (method, path, header
  lines) and what it answered. Faults can be switched on per path pattern: answer a status
  for the first N matching requests (or always), redirect them, or trickle the registry's
  body out slowly. What it counts is the front's own record, never the agent's.
- `ObjectServer` plays object storage behind a redirect: it serves blobs of an OCI layout
  under `/objects/<digest>` and records whether an Authorization header arrived.

Both are a `ThreadingHTTPServer` in a daemon thread, bound to a loopback address only
(127.0.0.2 and friends work too: all of 127.0.0.0/8 is on `lo`), and context managers.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Request headers that describe the hop to the front, not the request to the registry.
_HOP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)
_HOP_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
)
#: Upper bound on one forwarded body (test layers are a few MiB).
MAX_FORWARD_BODY = 256 * 1024 * 1024


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to bind non-loopback address {host!r}")


@dataclass(frozen=True)
class SeenRequest:
    """One request a front or object server received, and what it answered."""

    method: str
    path: str  # without the query
    query: str
    headers: tuple[tuple[str, str], ...]  # as received, in order, one entry per line
    status: int
    fault: str = ""  # name of the fault that answered, "" when forwarded unchanged

    def header_lines(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self.headers if k.lower() == key]

    def has_header(self, name: str) -> bool:
        return bool(self.header_lines(name))


@dataclass
class Fault:
    """What the front does instead of (or while) forwarding a matching request.

    Exactly one of `status`, `trickle` is set; with `status`, `location` or `body` may be.
    `times` bounds how many requests it applies to (None: all). `hits` counts the requests it
    answered.
    """

    name: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    times: int | None = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    location: Callable[[re.Match[str]], str] | None = None
    trickle: tuple[int, float] | None = None  # (bytes per piece, seconds between pieces)
    body: bytes | None = None  # with `status`: this body instead of an error's
    hits: int = 0

    def claims(self, method: str, path: str) -> re.Match[str] | None:
        if method not in self.methods or (self.times is not None and self.hits >= self.times):
            return None
        return self.pattern.search(path)


class _Server:
    """A ThreadingHTTPServer in a daemon thread; subclasses supply the handler logic."""

    name = "server"

    def __init__(self, host: str = "127.0.0.1") -> None:
        _check_loopback(host)
        self.bind_host = host
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> _Server:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                owner._handle(self)

            def do_HEAD(self) -> None:  # noqa: N802
                owner._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are recorded in `seen()` instead

        self._server = ThreadingHTTPServer((self.bind_host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """`<address>:<port>`, as an upstream entry or image reference names it."""
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- what was seen -------------------------------------------------------------------

    def _record(self, h: BaseHTTPRequestHandler, status: int, fault: str = "") -> None:
        path, _, query = h.path.partition("?")
        entry = SeenRequest(
            method=h.command,
            path=path,
            query=query,
            headers=tuple((k, v) for k, v in h.headers.items()),
            status=status,
            fault=fault,
        )
        with self._lock:
            self._seen.append(entry)

    def seen(self, method: str | None = None, path: str | re.Pattern[str] | None = None) -> list:
        """Requests received so far, oldest first; `path` is a regex searched in the path."""
        with self._lock:
            out = list(self._seen)
        if method is not None:
            out = [r for r in out if r.method == method]
        if path is not None:
            rx = re.compile(path) if isinstance(path, str) else path
            out = [r for r in out if rx.search(r.path)]
        return out

    def count(self, method: str | None = None, path: str | re.Pattern[str] | None = None) -> int:
        return len(self.seen(method, path))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        content_length: int | None = None,
    ) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        h.end_headers()
        if h.command != "HEAD" and body:
            h.wfile.write(body)


def blob_path_pattern(digest: str | None = None) -> re.Pattern[str]:
    """`/v2/<name>/blobs/<digest>` (any digest when None); group `digest`."""
    d = re.escape(digest) if digest else r"[a-z0-9]+:[a-f0-9]+"
    return re.compile(rf"^/v2/.+/blobs/(?P<digest>{d})$")


class RegistryFront(_Server):
    """A forwarding, counting, faulting front for a real registry (plain HTTP)."""

    name = "registry-front"

    def __init__(self, target_url: str, *, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        super().__init__(host)
        parts = urllib.parse.urlsplit(target_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"RegistryFront forwards to plain http only, not {target_url!r}")
        _check_loopback(parts.hostname)
        self.target_host = parts.hostname
        self.target_port = parts.port or 80
        self.timeout = timeout
        self._faults: list[Fault] = []

    # -- faults --------------------------------------------------------------------------

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        pattern: str | re.Pattern[str],
        status: int = 503,
        *,
        times: int | None = None,
        methods: Iterable[str] = ("GET",),
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer `status` (a registry-shaped JSON error) instead of forwarding."""
        return self._add(
            Fault(
                name=f"status-{status}",
                pattern=re.compile(pattern) if isinstance(pattern, str) else pattern,
                methods=frozenset(methods),
                times=times,
                status=status,
                headers=dict(headers or {}),
            )
        )

    def answer(
        self,
        pattern: str | re.Pattern[str],
        body: bytes,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> Fault:
        """Answer `status` with `body` (a registry that sends what it likes) instead of
        forwarding."""
        return self._add(
            Fault(
                name=f"answer-{status}",
                pattern=re.compile(pattern) if isinstance(pattern, str) else pattern,
                methods=frozenset(methods),
                status=status,
                headers=dict(headers or {}),
                body=body,
            )
        )

    def redirect(
        self,
        pattern: str | re.Pattern[str],
        location: Callable[[re.Match[str]], str],
        *,
        status: int = 307,
        times: int | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> Fault:
        """Answer `status` with `Location: location(match)` instead of forwarding."""
        return self._add(
            Fault(
                name=f"redirect-{status}",
                pattern=re.compile(pattern) if isinstance(pattern, str) else pattern,
                methods=frozenset(methods),
                times=times,
                status=status,
                location=location,
            )
        )

    def trickle(
        self,
        pattern: str | re.Pattern[str],
        *,
        piece: int,
        delay: float,
        times: int | None = None,
        methods: Iterable[str] = ("GET",),
    ) -> Fault:
        """Forward, but send the body `piece` bytes at a time, `delay` seconds apart."""
        if piece <= 0 or delay < 0:
            raise ValueError("trickle needs piece > 0 and delay >= 0")
        return self._add(
            Fault(
                name="trickle",
                pattern=re.compile(pattern) if isinstance(pattern, str) else pattern,
                methods=frozenset(methods),
                times=times,
                trickle=(piece, delay),
            )
        )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _claim(self, method: str, path: str) -> tuple[Fault, re.Match[str]] | None:
        with self._lock:
            for fault in self._faults:
                match = fault.claims(method, path)
                if match is not None:
                    fault.hits += 1
                    return fault, match
        return None

    # -- serving -------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.partition("?")[0]
        claimed = self._claim(h.command, path)
        fault, match = claimed if claimed else (None, None)
        if fault is not None and fault.status is not None:
            assert match is not None
            headers = list(fault.headers.items())
            if fault.location is not None:
                headers.append(("Location", fault.location(match)))
                body = b""
            elif fault.body is not None:
                body = fault.body
            else:
                body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the test front"}]}'
                headers.append(("Content-Type", "application/json"))
            self._record(h, fault.status, fault.name)
            self._send(h, fault.status, headers, body)
            return
        try:
            status, headers, body, length = self._forward(h)
        except (OSError, http.client.HTTPException) as exc:
            self._record(h, 502, "forward-failed")
            self._send(h, 502, [("Content-Type", "text/plain")], f"front: {exc}\n".encode())
            return
        self._record(h, status, fault.name if fault else "")
        if fault is not None and fault.trickle is not None and h.command != "HEAD":
            self._send_trickled(h, status, headers, body, *fault.trickle)
            return
        self._send(h, status, headers, body, content_length=length)

    def _forward(
        self, h: BaseHTTPRequestHandler
    ) -> tuple[int, list[tuple[str, str]], bytes, int | None]:
        conn = http.client.HTTPConnection(self.target_host, self.target_port, timeout=self.timeout)
        try:
            conn.putrequest(h.command, h.path, skip_accept_encoding=True)
            for k, v in h.headers.items():  # every line as its own line
                if k.lower() not in _HOP_HEADERS and k.lower() != "content-length":
                    conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            headers = [
                (k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_RESPONSE_HEADERS
            ]
            if h.command == "HEAD":
                length = resp.getheader("Content-Length")
                resp.read()
                return resp.status, headers, b"", int(length) if length else 0
            body = resp.read(MAX_FORWARD_BODY + 1)
            if len(body) > MAX_FORWARD_BODY:
                raise http.client.HTTPException("forwarded body too large for the test front")
            return resp.status, headers, body, None
        finally:
            conn.close()

    @staticmethod
    def _send_trickled(
        h: BaseHTTPRequestHandler,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        piece: int,
        delay: float,
    ) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        try:
            for offset in range(0, len(body), piece):  # bounded by the body's length
                h.wfile.write(body[offset : offset + piece])
                h.wfile.flush()
                if offset + piece < len(body):
                    time.sleep(delay)  # the slowness is the behaviour under test
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True


class ObjectServer(_Server):
    """Object storage for redirected blob GETs: `/objects/<digest>` from an OCI blobs dir."""

    name = "object-server"

    def __init__(self, blobs_dir: Path, *, host: str = "127.0.0.2") -> None:
        super().__init__(host)
        self.blobs_dir = Path(blobs_dir)  # <layout>/blobs: holds <algorithm>/<hex>

    def location(self, digest: str) -> str:
        return f"{self.url}/objects/{digest}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.partition("?")[0]
        m = re.fullmatch(r"/objects/(?P<algo>[a-z0-9]+):(?P<hex>[a-f0-9]+)", path)
        file = self.blobs_dir / m["algo"] / m["hex"] if m else None
        if file is None or not file.is_file():
            self._record(h, 404)
            self._send(h, 404, [("Content-Type", "text/plain")], b"no such object\n")
            return
        data = file.read_bytes()
        self._record(h, 200)
        self._send(h, 200, [("Content-Type", "application/octet-stream")], data)
