"""The registry front end on the proxy port: a request in, a response out.

Routing and validation are pure (`agent.registry.routes`, `agent.registry.ranges`,
`agent.registry.upstreams`); this module applies them and talks to the upstream, the auth checker
and the layer fetcher. Every failure becomes a registry-shaped error with the status of
docs/ARCHITECTURE.md ("The proxy port"): 400 bad input, 403 a registry not allowed, 502 upstream
unreachable or 5xx, upstream statuses passed through.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from agent.core.config import Config
from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.fetch.fetcher import LayerFetcher
from agent.fetch.readers import BlobSource
from agent.http.client import HttpClientError
from agent.http.responses import Headers, Response, bytes_response, json_response
from agent.http.server import Request
from agent.observe.auditline import HTTP_PREAD, blob_pathname, failure_size
from agent.observe.events import NULL_OBSERVER, LayerReport, LayerTimes, Observer
from agent.registry.authcheck import AuthChecker
from agent.registry.client import (
    RegistryClient,
    UpstreamUnavailable,
    forwarded_headers,
    passthrough_error,
)
from agent.registry.ranges import decide_range
from agent.registry.routes import (
    Blob,
    Health,
    Manifest,
    Metrics,
    Ready,
    Status,
    V2Base,
    parse_target,
)
from agent.registry.upstreams import choose_upstream

log = logging.getLogger(__name__)

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
# What containerd (MaxManifestSize), skopeo and the registry (on pull) accept, and the OCI
# distribution spec's recommended floor: a manifest beyond it is refused, never held.
MANIFEST_LIMIT = 4 * 1024 * 1024
V2_BODY_LIMIT = 64 * 1024
# Response headers of a registry that a client of the mirror needs to see.
MANIFEST_RESPONSE_HEADERS = (
    b"content-type",
    b"docker-content-digest",
    b"etag",
    b"www-authenticate",
    b"retry-after",
)


def error_response(err: RegistryError) -> Response:
    """The registry's error shape, with the headers the error carries (WWW-Authenticate)."""
    extra = [
        API_VERSION,
        *[
            (k, v)
            for k, v in err.headers
            if k not in (b"content-length", b"content-type", API_VERSION[0])
        ],
    ]
    return bytes_response(err.status, err.body(), b"application/json; charset=utf-8", extra)


def protocol_error_response(status: int, message: str) -> Response:
    """Errors found by the HTTP layer itself (431, 400, 413), in the registry's shape."""
    code = {431: "UNSUPPORTED", 413: "SIZE_INVALID"}.get(status, "UNSUPPORTED")
    return error_response(RegistryError(status, code, message))


@dataclass(eq=False, kw_only=True)
class RegistryProxy:
    """The proxy port's application object."""

    config: Config
    registry: RegistryClient
    auth: AuthChecker
    fetcher: LayerFetcher
    status: Callable[[], dict[str, object]]
    metrics: Callable[[], Response] | None = None  # /metrics here when not on its own port
    observer: Observer = NULL_OBSERVER  # http:pread and the per-layer summary
    ready: bool = field(default=False, init=False)
    # manifestFetchLimit: manifests read from upstreams at once (each held in memory whole).
    manifest_fetches: trio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.manifest_fetches = trio.CapacityLimiter(self.config.manifest_fetch_limit)

    async def handle(self, request: Request) -> Response:
        try:
            target = parse_target(request.method, request.target)
            route = target.route
            if isinstance(route, Health):
                return json_response(200, {"status": "alive"})
            if isinstance(route, Ready):
                if self.ready:
                    return json_response(200, {"status": "ready"})
                return json_response(503, {"status": "not ready"})
            if isinstance(route, Status):
                if not request.client_is_loopback:
                    raise RegistryError(
                        403, "DENIED", "status is answered to loopback clients only"
                    )
                return json_response(200, self.status())
            if isinstance(route, Metrics):
                if self.metrics is None:
                    raise RegistryError(404, "NOT_FOUND", "metrics are not served on this port")
                return self.metrics()
            upstream = choose_upstream(
                ns=target.ns,
                host_header=request.header("host"),
                upstreams=self.config.upstreams,
                default=self.config.default_upstream,
            )
            if isinstance(route, V2Base):
                return await self._v2_base(request, upstream)
            if isinstance(route, Manifest):
                return await self._manifest(request, upstream, route)
            assert isinstance(route, Blob)
            return await self._blob(request, upstream, route)
        except RegistryError as err:
            log.log(
                logging.WARNING if err.status >= 500 else logging.INFO,
                "conn %d: %s %s -> %d %s",
                request.conn_id,
                request.method,
                request.target,
                err.status,
                err.message,
            )
            return error_response(err)

    async def _v2_base(self, request: Request, upstream: Upstream) -> Response:
        headers = forwarded_headers(request.headers)
        async with self.registry.open(
            "GET", upstream, "/v2/", headers, follow_redirects=False
        ) as resp:
            try:
                body = await resp.read_all(V2_BODY_LIMIT)
            except HttpClientError as exc:
                raise UpstreamUnavailable(f"upstream {upstream.key}: {exc}") from exc
            passed = [
                (k, v) for k, v in resp.headers if k in (b"content-type", b"www-authenticate")
            ]
        return Response(
            status=resp.status,
            headers=[*passed, API_VERSION, (b"content-length", str(len(body)).encode())],
            body=body,
        )

    async def _manifest(self, request: Request, upstream: Upstream, route: Manifest) -> Response:
        if not self.manifest_fetches.available_tokens:
            self.observer.limit_hit("proxy", "manifest_fetches")
        async with self.manifest_fetches:
            return await self._fetch_manifest(request, upstream, route)

    async def _fetch_manifest(
        self, request: Request, upstream: Upstream, route: Manifest
    ) -> Response:
        headers = forwarded_headers(request.headers)
        path = f"/v2/{route.name}/manifests/{route.reference}"
        # Registries serve manifests themselves; redirects are for blobs (object storage). A
        # manifest redirect is not followed: it could send the agent anywhere, loopback too.
        async with self.registry.open(
            request.method, upstream, path, headers, follow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                raise UpstreamUnavailable(
                    f"manifest {path} from {upstream.key}: the registry redirected it "
                    f"({resp.status}); manifests are not fetched from elsewhere"
                )
            if resp.status >= 400:
                raise await passthrough_error(resp, path)
            if (resp.content_length or 0) > MANIFEST_LIMIT:
                raise UpstreamUnavailable(
                    f"manifest {path} from {upstream.key} is {resp.content_length} bytes, more "
                    f"than the {MANIFEST_LIMIT >> 20} MiB that registries and clients accept"
                )
            try:
                body = await resp.read_all(MANIFEST_LIMIT)
            except HttpClientError as exc:
                raise UpstreamUnavailable(f"manifest {path} from {upstream.key}: {exc}") from exc
            passed = [(k, v) for k, v in resp.headers if k in MANIFEST_RESPONSE_HEADERS]
            length = resp.content_length if request.method == "HEAD" else len(body)
        if request.method == "GET":
            self._verify_manifest(route, resp.header("docker-content-digest"), body, upstream)
        out = [*passed, API_VERSION]
        if length is not None:
            out.append((b"content-length", str(length).encode()))
        return Response(status=resp.status, headers=out, body=body)

    @staticmethod
    def _verify_manifest(
        route: Manifest, header_digest: str | None, body: bytes, upstream: Upstream
    ) -> None:
        """Hash the manifest: it crossed a trust boundary and names every layer we will serve."""
        expected = str(route.digest) if route.digest else header_digest
        if not expected or ":" not in expected:
            return
        algorithm, _, hexpart = expected.partition(":")
        if algorithm not in ("sha256", "sha512"):
            return
        actual = hashlib.new(algorithm, body).hexdigest()
        if actual != hexpart:
            raise UpstreamUnavailable(
                f"manifest {route.reference} from {upstream.key} does not match digest {expected}"
            )

    async def _blob(self, request: Request, upstream: Upstream, route: Blob) -> Response:
        started = time.perf_counter()
        headers = forwarded_headers(request.headers)
        size = await self.auth.check(
            upstream=upstream, repo=route.name, digest=route.digest, headers=headers
        )
        auth_seconds = time.perf_counter() - started
        if request.method == "HEAD":
            return await self._blob_head(upstream, route, headers)
        source = await self.fetcher.open(
            upstream=upstream, repo=route.name, digest=route.digest, headers=headers, size=size
        )
        try:
            decision = decide_range(request.header("range"), source.size)
            response_headers = [
                (b"content-type", b"application/octet-stream"),
                (b"docker-content-digest", str(route.digest).encode()),
                (b"accept-ranges", b"bytes"),
                API_VERSION,
                *decision.headers(source.size),
            ]
            if decision.range is None:
                source.close()
                return Response(status=416, headers=response_headers, body=b"")
            start, end = decision.range.start, decision.range.end

            def finished(sent: int, error: BaseException | None) -> None:
                # One http:pread line and one per-layer summary per blob response.
                seconds = time.perf_counter() - started
                ok = error is None and sent == end - start
                pathname = blob_pathname(upstream.scheme, upstream.key, route.name, digest)
                size = sent if ok else failure_size(error)
                self.observer.served(HTTP_PREAD, pathname, start, size, seconds)
                times = LayerTimes()
                times.add_time("auth", auth_seconds)
                source.account(times)
                report = LayerReport(
                    digest=digest,
                    upstream=upstream.key,
                    repo=route.name,
                    size=sent,
                    seconds=seconds,
                    result="ok" if ok else "failed",
                    times=times,
                )
                self.observer.layer_done(report)

            digest = str(route.digest)
            body = _stream(source, start, end, finished)
        except BaseException:
            source.close()
            raise
        return Response(status=decision.status, headers=response_headers, body=body)

    async def _blob_head(self, upstream: Upstream, route: Blob, headers: Headers) -> Response:
        entry_size = self.fetcher.cached_size(str(route.digest))
        if entry_size is None:
            path = f"/v2/{route.name}/blobs/{route.digest}"
            async with self.registry.open(
                "HEAD", upstream, path, headers, follow_redirects=True
            ) as resp:
                if resp.status >= 400:
                    raise await passthrough_error(resp, path)
                entry_size = resp.content_length
        out = [
            (b"content-type", b"application/octet-stream"),
            (b"docker-content-digest", str(route.digest).encode()),
            (b"accept-ranges", b"bytes"),
            API_VERSION,
        ]
        if entry_size is not None:
            out.append((b"content-length", str(entry_size).encode()))
        return Response(status=200, headers=out)


async def _stream(
    source: BlobSource,
    start: int,
    end: int,
    finished: Callable[[int, BaseException | None], None],
) -> AsyncIterator[memoryview]:
    sent = 0
    error: BaseException | None = None
    try:
        async with aclosing(source.read(start, end)) as pieces:
            async for piece in pieces:
                yield piece
                sent += len(piece)
    except BaseException as exc:
        error = exc
        raise
    finally:
        source.close()
        finished(sent, error)
