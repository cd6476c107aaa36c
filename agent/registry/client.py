"""Talking to an upstream registry: which headers go, retries, and redirects.

The rules here are the ones a registry client expects of a mirror:
- the client's ``Authorization`` goes to the registry, never to another host a redirect names;
- repeated ``Accept`` lines stay separate (Distribution misreads folded ones);
- idempotent requests are retried a bounded number of times, with backoff, on connection
  errors, 429 and 5xx; what is left after that is the client's to see (429) or a 502.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urljoin

import trio

from agent.core.errors import RegistryError
from agent.core.upstream import Upstream
from agent.http.client import ClientResponse, HttpClient, HttpClientError, Origin
from agent.http.responses import Headers

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE = 0.2
BACKOFF_MAX = 2.0
# Headers of the client's request worth passing to a registry; others (Host, Connection,
# proxy hop-by-hop headers) describe the hop to us, not to the registry.
# Not Accept-Encoding: the agent takes the bytes as the registry stores them (digests are of
# those), and one client's choice would drive a download every reader of the layer shares.
FORWARDED_REQUEST_HEADERS = (b"authorization", b"accept", b"user-agent")
# Upstream statuses passed to the client as they are (with these headers): the client must see
# the registry's own answer to its credentials or its request.
PASSTHROUGH_HEADERS = (b"www-authenticate", b"retry-after", b"docker-distribution-api-version")
ERROR_BODY_LIMIT = 64 * 1024


class UpstreamUnavailable(RegistryError):
    """The registry could not be reached or kept failing: 502 so containerd tries the next host."""

    def __init__(self, message: str) -> None:
        super().__init__(502, "UNAVAILABLE", message)


def forwarded_headers(client_headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    """The client's headers that go upstream, each line kept as its own line."""
    return [(k, v) for k, v in client_headers if k in FORWARDED_REQUEST_HEADERS]


def without_authorization(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k != b"authorization"]


def backoff_delay(attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter; a short Retry-After from the registry wins."""
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), BACKOFF_MAX)
    delay = min(BACKOFF_BASE * (2**attempt), BACKOFF_MAX)
    return delay * (0.5 + random.random() / 2)


async def passthrough_error(response: ClientResponse, what: str) -> RegistryError:
    """Turn an upstream's non-success answer into the same answer for our client."""
    try:
        await response.read_all(ERROR_BODY_LIMIT)  # drained, so the connection can be reused
    except HttpClientError:
        pass
    headers = [(k, v) for k, v in response.headers if k in PASSTHROUGH_HEADERS]
    return RegistryError(
        response.status,
        {401: "UNAUTHORIZED", 403: "DENIED", 404: "BLOB_UNKNOWN", 429: "TOOMANYREQUESTS"}.get(
            response.status, "UNKNOWN"
        ),
        f"upstream answered {response.status} for {what}",
        headers=headers,
    )


class RegistryClient:
    """Requests to allowed upstreams, with the retry and redirect rules above."""

    def __init__(self, http: HttpClient, *, retries: int) -> None:
        self._http = http
        self._attempts = max(0, retries) + 1  # `retries` counts the tries after the first

    @asynccontextmanager
    async def open(
        self,
        method: str,
        upstream: Upstream,
        path: str,
        headers: Headers,
        *,
        follow_redirects: bool,
    ) -> AsyncIterator[ClientResponse]:
        """Send `method path` to `upstream` and yield the final response.

        Raises `UpstreamUnavailable` when every attempt failed to connect or got a 5xx; a
        final 429 is yielded so the client sees it.
        """
        url = upstream.base_url + path
        last_error = ""
        for attempt in range(self._attempts):
            if attempt:
                await trio.sleep(backoff_delay(attempt - 1, None))
            stack = AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self._follow(method, url, headers, follow_redirects)
                )
            except HttpClientError as exc:
                await stack.aclose()
                last_error = str(exc)
                log.info("upstream %s %s attempt %d failed: %s", method, url, attempt + 1, exc)
                continue
            if response.status in RETRY_STATUSES and attempt + 1 < self._attempts:
                await stack.aclose()
                last_error = f"{response.status} from {response.url}"
                log.info("upstream %s %s: %s, retrying", method, url, last_error)
                retry_after = response.header("retry-after")
                if response.status == 429 and retry_after:
                    await trio.sleep(backoff_delay(attempt, retry_after))
                continue
            if response.status >= 500:
                await stack.aclose()
                raise UpstreamUnavailable(
                    f"upstream {upstream.key} answered {response.status} for {path}"
                )
            async with stack:
                yield response
            return
        raise UpstreamUnavailable(
            f"upstream {upstream.key} unreachable after {self._attempts} attempts: {last_error}"
        )

    @asynccontextmanager
    async def _follow(
        self, method: str, url: str, headers: Headers, follow_redirects: bool
    ) -> AsyncIterator[ClientResponse]:
        origin = Origin.from_url(url)
        current_url = url
        current_headers = headers
        for _hop in range(MAX_REDIRECTS + 1):
            async with self._http.request(method, current_url, current_headers) as response:
                location = response.header("location")
                if not (follow_redirects and response.status in REDIRECT_STATUSES and location):
                    yield response
                    return
                # Drain the (small) redirect body so the connection can be reused.
                try:
                    await response.read_all(64 * 1024)
                except HttpClientError:
                    pass
            next_url = urljoin(current_url, location)
            try:
                next_origin = Origin.from_url(next_url)
            except ValueError as exc:
                raise UpstreamUnavailable(f"redirect to unsupported URL {next_url!r}") from exc
            if next_origin != origin:
                current_headers = without_authorization(current_headers)
            log.debug("following %d redirect %s -> %s", response.status, current_url, next_url)
            current_url = next_url
        raise UpstreamUnavailable(f"more than {MAX_REDIRECTS} redirects from {url}")
