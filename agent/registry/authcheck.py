"""May this client read this layer? Asked of the upstream, remembered for ``authCacheTTL``.

The cache holds layers of private repositories. Before a cached (or already downloading)
layer is handed to a client, the upstream is asked with the client's own credentials: a HEAD
on the blob in the repository the client named. Only "yes" is remembered, keyed by upstream,
repository, digest and a hash of the credential, so a credential that may read one repository
never reads another repository's layers through the cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import trio

from agent.core.upstream import Upstream
from agent.http.responses import Headers
from agent.registry.client import RegistryClient, UpstreamUnavailable, passthrough_error
from agent.registry.routes import Digest

log = logging.getLogger(__name__)

MAX_REMEMBERED = 65536


REDIRECTS = frozenset({301, 302, 303, 307, 308})


def is_blob_redirect(status: int, location: str | None) -> bool:
    """A registry sending a blob to object storage: a redirect status with a place to go."""
    return status in REDIRECTS and bool(location and location.strip())


def credential_key(headers: Headers) -> str:
    """A stable hash of the client's Authorization (never the secret itself)."""
    value = b"\n".join(v for k, v in headers if k == b"authorization")
    return hashlib.sha256(value).hexdigest()


class AuthChecker:
    def __init__(self, registry: RegistryClient, *, ttl: float) -> None:
        self._registry = registry
        self._ttl = ttl
        # (upstream, repo, digest, credential) -> (expires, the blob's size as answered)
        self._allowed: OrderedDict[tuple[str, str, str, str], tuple[float, int | None]] = (
            OrderedDict()
        )
        self.results = {"allowed_cached": 0, "allowed": 0, "denied": 0}

    async def check(
        self, *, upstream: Upstream, repo: str, digest: Digest, headers: Headers
    ) -> int | None:
        """Return if the upstream lets this credential read the blob; else raise its answer.

        Returns the blob's size when the registry said it (a redirect to object storage does
        not): the size a root must agree with before this node trusts its chunk table."""
        key = (upstream.key, repo, str(digest), credential_key(headers))
        now = trio.current_time()
        expires, size = self._allowed.get(key, (0.0, None))
        if expires > now:
            self.results["allowed_cached"] += 1
            return size
        auth_headers = [(k, v) for k, v in headers if k in (b"authorization", b"user-agent")]
        path = f"/v2/{repo}/blobs/{digest}"
        # A redirect to object storage already means "yes": do not follow it. Only a real
        # redirect does (a Location to go to); any other 3xx (304, 300...) is no answer.
        async with self._registry.open(
            "HEAD", upstream, path, auth_headers, follow_redirects=False
        ) as response:
            status = response.status
            size = response.content_length if status == 200 else None
            if not (200 <= status < 300 or is_blob_redirect(status, response.header("location"))):
                self.results["denied"] += 1
                log.info("auth check %s %s: upstream said %d", repo, digest, status)
                if status < 400:  # not a refusal to pass on either: no answer at all
                    raise UpstreamUnavailable(
                        f"upstream answered {status} to the access check of {path}: "
                        "neither a yes nor a no"
                    )
                raise await passthrough_error(response, path)
        self.results["allowed"] += 1
        self._allowed[key] = (now + self._ttl, size)
        self._allowed.move_to_end(key)
        while len(self._allowed) > MAX_REMEMBERED:
            self._allowed.popitem(last=False)
        return size
