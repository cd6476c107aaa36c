"""In-process stand-ins for the data path's neighbours, on real loopback sockets.

`FakeRegistry` is an upstream registry in the test's own trio run: a small application on the
agent's `HttpServer`, serving ``/v2/<repo>/blobs/<digest>`` from memory. Each blob carries its
behaviour -- hold the response until released, break the body after N bytes once, serve one
byte flipped, ignore Range -- and records the Range header of every GET, so a test can say
exactly what the agent asked the origin for.

`DataPath` builds a node's data path from a `Config` the way `agent.daemon.Agent` does (chunk
cache in a directory, HTTP client, registry client, layer fetcher), so in-process tests drive
the real objects with the real wiring, minus the daemon's signals, listeners and telemetry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agent.cache import engines, native
from agent.cache.store import ChunkCache
from agent.core.config import Config, load_config
from agent.core.upstream import Upstream
from agent.fetch.fetcher import LayerFetcher
from agent.fetch.model import FetchContext
from agent.fetch.readers import BlobSource
from agent.http.client import HttpClient
from agent.http.responses import FileRegion, Response
from agent.http.server import (
    HttpServer,
    Request,
    ServerSettings,
    listener_port,
    open_listeners,
)
from agent.http.tls import make_client_ssl_context
from agent.registry.client import RegistryClient
from agent.swarm.download import SwarmContext

BLOB_RE = re.compile(r"/v2/(?P<repo>.+)/blobs/(?P<digest>[a-z0-9]+:[0-9a-f]+)")
RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")
PIECE = 64 * 1024  # body pieces the fake sends: several per chunk, so breaks land mid-chunk


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class CutShort(Exception):
    """Raised inside a body to break it on purpose: the server closes the connection
    mid-message, as a registry whose connection drops would."""


@dataclass(eq=False, kw_only=True)
class FakeBlob:
    """One blob and how the fake registry misbehaves when serving it."""

    data: bytes
    digest: str
    # The next GET's body stops after this many bytes (the connection closes mid-body); once.
    break_at: int | None = None
    # Serve the byte at this offset flipped: same length, wrong digest (every GET).
    corrupt_at: int | None = None
    # False: a Range request is answered 200 with the whole body (a registry without ranges).
    honour_range: bool = True
    # When set, each GET waits for it before answering (readers can join a download first).
    hold: trio.Event | None = None
    # The body stops after this many bytes until `resume` is set (a download caught midway).
    pause_at: int | None = None
    resume: trio.Event = field(default_factory=trio.Event)
    # The Range header of each GET in arrival order, None for a GET without one.
    gets: list[str | None] = field(default_factory=list)
    # Set when a GET for this blob has arrived (before any hold).
    requested: trio.Event = field(default_factory=trio.Event)

    @property
    def size(self) -> int:
        return len(self.data)

    def served_bytes(self) -> bytes:
        if self.corrupt_at is None:
            return self.data
        flipped = bytearray(self.data)
        flipped[self.corrupt_at] ^= 0xFF
        return bytes(flipped)


class FakeRegistry:
    """An upstream registry serving blobs from memory over plain HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.blobs: dict[str, FakeBlob] = {}
        self.port = 0
        self.server = HttpServer(self.handle, ServerSettings(), name="fake-registry")

    def add(self, data: bytes, **behaviour: object) -> FakeBlob:
        """Serve `data` under its sha256 digest, misbehaving as `FakeBlob`'s fields say."""
        blob = FakeBlob(data=data, digest=digest_of(data), **behaviour)  # type: ignore[arg-type]
        self.blobs[blob.digest] = blob
        return blob

    @property
    def upstream(self) -> Upstream:
        assert self.port, "FakeRegistry.run has not started"
        return Upstream("http", "127.0.0.1", self.port)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners("127.0.0.1", 0, None)
        self.port = listener_port(listeners)
        await serve(self.server, listeners, task_status=task_status)

    async def handle(self, request: Request) -> Response:
        match = BLOB_RE.fullmatch(request.target)
        blob = self.blobs.get(match["digest"]) if match else None
        if blob is None:
            return _error(404, "BLOB_UNKNOWN", f"no blob at {request.target}")
        if request.method == "HEAD":
            return Response(status=200, headers=_length(blob.size))
        if request.method != "GET":
            return _error(405, "UNSUPPORTED", request.method)
        range_header = request.header("range")
        blob.gets.append(range_header)
        blob.requested.set()
        if blob.hold is not None:
            await blob.hold.wait()
        start = 0
        status = 200
        headers = _length(blob.size)
        if range_header is not None and blob.honour_range:
            m = RANGE_RE.fullmatch(range_header)
            if m is None or int(m[1]) >= blob.size:
                return _error(416, "RANGE_INVALID", range_header)
            start, status = int(m[1]), 206
            end = min(int(m[2]), blob.size - 1) if m[2] else blob.size - 1
            headers = [
                *_length(end + 1 - start),
                (b"content-range", f"bytes {start}-{end}/{blob.size}".encode()),
            ]
        end_of_body = blob.size if status == 200 else end + 1
        stop = end_of_body
        if blob.break_at is not None:
            stop = max(start, min(end_of_body, blob.break_at))
            blob.break_at = None
        body = _body(blob, start, stop, end_of_body)
        return Response(status=status, headers=headers, body=body)


async def _body(
    blob: FakeBlob, start: int, stop: int, end_of_body: int
) -> AsyncIterator[memoryview]:
    data = memoryview(blob.served_bytes())
    offset = start
    while offset < stop:
        end = min(stop, offset + PIECE)
        if blob.pause_at is not None and offset < blob.pause_at <= end:
            if blob.pause_at > offset:
                yield data[offset : blob.pause_at]
                offset = blob.pause_at
            await blob.resume.wait()
            continue
        yield data[offset:end]
        offset = end
    if stop < end_of_body:
        raise CutShort(f"fake registry breaks the body at byte {stop}")


async def serve(
    server: HttpServer,
    listeners: list[trio.abc.Listener[trio.abc.Stream]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`server.serve` until the test's nursery is cancelled. `HttpServer.serve` closes its
    listeners only after `drain`; cancelled, it leaves them open, so they are closed here."""
    try:
        await server.serve(listeners, task_status=task_status)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


def _length(n: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(n).encode()),
    ]


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return Response(status=status, headers=headers, body=body)


def node_config(cache_path: Path, registry: FakeRegistry, **env: str | int | float) -> Config:
    """A `Config` for a node whose only upstream is `registry`; `env` overrides by env var
    name without the ``POLLEN_`` prefix (``CACHE_CAPACITY=65536``)."""
    environ: dict[str, str] = {
        "POLLEN_UPSTREAMS": str(registry.upstream),
        "POLLEN_CACHE_PATH": str(cache_path),
        "POLLEN_CACHE_CHUNK_SIZE": "16KiB",
        "POLLEN_CACHE_CAPACITY": "16MiB",
        "POLLEN_UPSTREAM_TIMEOUT": "5s",
        "POLLEN_NODE_IP": "127.0.0.1",
        "POLLEN_PROXY_PORT": "0",
        "POLLEN_P2P_PORT": "0",
    }
    environ.update({f"POLLEN_{k}": str(v) for k, v in env.items()})
    return load_config(environ)


def plain_http_client(timeout: float) -> HttpClient:
    """An HTTP client as the daemon makes one for plain-HTTP upstreams and P2P ports."""
    return HttpClient(make_client_ssl_context(None), timeout=timeout)


@dataclass(eq=False)
class DataPath:
    """A node's cache, upstream client and layer fetcher, wired as `agent.daemon.Agent` does."""

    config: Config
    cache: ChunkCache
    http: HttpClient
    registry: RegistryClient
    fetcher: LayerFetcher

    @classmethod
    def build(
        cls, config: Config, *, swarm: SwarmContext | None = None, root: bool = False
    ) -> DataPath:
        cache = ChunkCache(
            Path(config.cache_path),
            capacity=config.cache_capacity,
            chunk_size=config.cache_chunk_size,
            engine=engines.PreadEngine(4, direct=config.cache_aio_enable),
            files=native,
            direct=config.cache_aio_enable,
            write_retry=config.cache_write_retry,
            chunk_tables=root,
        )
        cache.load()
        http = plain_http_client(config.upstream_timeout)
        registry = RegistryClient(http, retries=config.upstream_retries)
        fetcher = LayerFetcher(
            FetchContext(
                cache=cache,
                registry=registry,
                retries=config.upstream_retries,
                slow_reader=config.slow_reader_timeout,
            ),
            concurrency_limit=config.proxy_concurrency_limit,
            swarm=swarm,
        )
        return cls(config, cache, http, registry, fetcher)

    async def aclose(self) -> None:
        await self.http.aclose()


def as_bytes(piece: bytes | bytearray | memoryview | FileRegion) -> bytes | memoryview:
    """A piece of a layer as bytes: a cached chunk comes as a `FileRegion` (for sendfile)."""
    if not isinstance(piece, FileRegion):
        return memoryview(piece)
    data = os.pread(piece.fd, piece.length, piece.offset)
    assert len(data) == piece.length, f"the file ended {piece.length - len(data)} bytes early"
    return data


async def read_into(source: BlobSource, received: bytearray) -> None:
    """Read a whole layer into `received` and close the source, whatever happens: a test
    that expects the read to fail still sees how many bytes a client would have got."""
    try:
        async with aclosing(source.read(0, source.size)) as pieces:
            async for piece in pieces:
                received += as_bytes(piece)
    finally:
        source.close()
