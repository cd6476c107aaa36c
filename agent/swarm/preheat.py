"""The preheat endpoint of the P2P port, without I/O: "hold this layer in your cache".

Theory of operation
-------------------
`pollen preheat` (agent/preheat/) warms a cluster before a rollout: for every blob of an image
it asks the blob's owning root (the root an agent would ask, rendezvous over the node's
``roots``) to fetch the blob into its cache, and waits until each one is there. One signed
request per blob and answer, repeated until the blob is complete:

``GET /p2p/v1/preheat/<digest>?upstream=<key>&repo=<name>[&size=<bytes>]&n=<nonce>``

The root starts (or joins) its own download of the layer, exactly as when an agent asks for a
plan (the origin or its parent tier; the digest checked before the layer counts as cached),
waits a moment for progress, and answers a :class:`PreheatReply`: the size, the bytes it has,
whether the layer is complete and whether it was already there. Asking again is how the
client follows the download, and how a root that restarted meanwhile starts it again: the
request is idempotent. Like a plan request it carries a nonce under its signature and is
answered once (`agent.swarm.replay`), it carries the client's registry credential only over
P2P TLS (``x-pollen-authorization``), and its reply is signed for the request
(`agent.swarm.signing.sign_reply`). ``size`` is the blob's size from the image manifest, so a
root refuses at once a layer its cache could never hold, instead of fetching it for nothing.

:func:`parse_p2p_target` is the P2P port's one parser: preheat targets here, chunk and plan
targets in `agent.swarm.protocol`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.swarm.plan import check_error
from agent.swarm.protocol import (
    MAX_ERROR_CHARS,
    MAX_NONCE,
    P2PProtocolError,
    P2PTarget,
    check_digest,
    check_repo,
    check_upstream,
    is_int,
    parse_decimal,
    parse_query,
    parse_target,
    quote_brackets,
    split_target,
)

PREHEAT_PREFIX = "/p2p/v1/preheat/"
MAX_LAYER_BYTES = 1 << 50  # a blob size beyond this (1 PiB) is nobody's layer
MAX_REPLY_BYTES = 4096
_PARAMS = ("upstream", "repo", "size", "n")
_REPLY_KEYS = frozenset({"size", "stored", "complete", "cached", "error", "error_status"})


@dataclass(frozen=True, kw_only=True)
class PreheatTarget:
    """``GET /p2p/v1/preheat/<digest>?...``: fetch this blob into your cache.

    - ``upstream``, ``repo``: where the blob comes from (``Upstream.key``, repository name);
    - ``size``: its size as the image's manifest says, None when unknown;
    - ``nonce``: makes each request (and its signature) unique; 0: none (the client appends
      ``n=`` to the target it signs, as for plan requests).
    """

    digest: str
    upstream: str
    repo: str
    size: int | None = None
    nonce: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", check_digest(self.digest))
        check_upstream(self.upstream)
        check_repo(self.repo)
        if self.size is not None and (
            not is_int(self.size) or not 0 <= self.size < MAX_LAYER_BYTES
        ):
            raise P2PProtocolError(f"size must be an integer in 0..{MAX_LAYER_BYTES - 1}")
        if not is_int(self.nonce) or not 0 <= self.nonce < MAX_NONCE:
            raise P2PProtocolError(f"nonce must be an integer in 0..{MAX_NONCE - 1}")

    def target(self) -> str:
        params = [f"upstream={quote_brackets(self.upstream)}", f"repo={self.repo}"]
        if self.size is not None:
            params.append(f"size={self.size}")
        if self.nonce:
            params.append(f"n={self.nonce}")
        return f"{PREHEAT_PREFIX}{self.digest}?{'&'.join(params)}"


def parse_p2p_target(method: str, target: str) -> P2PTarget | PreheatTarget:
    """A P2P request's method and target → ChunkTarget, PlanTarget or PreheatTarget.

    Raises only P2PProtocolError (404 unknown path, 405 wrong method, 414 too long, else 400).
    """
    path, _, query = split_target(method, target)
    if not path.startswith(PREHEAT_PREFIX):
        return parse_target(method, target)
    digest = path[len(PREHEAT_PREFIX) :]
    if "/" in digest:
        raise P2PProtocolError(
            f"expected {PREHEAT_PREFIX}<digest>, got {path[:120]!r}", status_hint=404
        )
    if method != "GET":
        raise P2PProtocolError(f"method {method[:20]} not allowed on preheat", status_hint=405)
    params = parse_query(query, _PARAMS, "preheat")
    lacking = [k for k in ("upstream", "repo") if k not in params]
    if lacking:
        raise P2PProtocolError("preheat request lacks " + ", ".join(lacking))
    size = params.get("size")
    return PreheatTarget(
        digest=digest,
        upstream=params["upstream"],
        repo=params["repo"],
        size=None if size is None else parse_decimal(size, "size", MAX_LAYER_BYTES),
        nonce=parse_decimal(params.get("n", "0"), "n", MAX_NONCE),
    )


@dataclass(frozen=True, kw_only=True)
class PreheatReply:
    """A root's answer to a PreheatTarget.

    - ``size``: the blob's length, None while the origin has not told the root yet;
    - ``stored``: bytes of it the root has so far;
    - ``complete``: the blob is in the root's cache and matched its digest;
    - ``cached``: it was there already: this request fetched nothing;
    - ``error`` / ``error_status``: why the root cannot hold it (the origin's 401, 404, 403
      for a registry it may not contact, 507 for a blob bigger than its cache, 502...).
    """

    size: int | None
    stored: int = 0
    complete: bool = False
    cached: bool = False
    error: str | None = None
    error_status: int | None = None

    def __post_init__(self) -> None:
        for name in ("complete", "cached"):
            if type(getattr(self, name)) is not bool:
                raise P2PProtocolError(f"{name} must be true or false")
        if self.size is not None and (
            not is_int(self.size) or not 0 <= self.size < MAX_LAYER_BYTES
        ):
            raise P2PProtocolError(f"size must be an integer in 0..{MAX_LAYER_BYTES - 1}")
        if not is_int(self.stored) or not 0 <= self.stored < MAX_LAYER_BYTES:
            raise P2PProtocolError(f"stored must be an integer in 0..{MAX_LAYER_BYTES - 1}")
        if self.size is not None and self.stored > self.size:
            raise P2PProtocolError(f"stored {self.stored} is beyond the size {self.size}")
        if self.complete and self.stored != self.size:
            raise P2PProtocolError("a complete blob has a size and all of it stored")
        if self.cached and not self.complete:
            raise P2PProtocolError("only a complete blob was cached already")
        check_error(self.error, self.error_status)
        if self.error is not None and self.complete:
            raise P2PProtocolError("an error reply does not complete")

    @classmethod
    def failed(cls, status: int, message: str) -> PreheatReply:
        """An error reply; the message is cut to fit and made printable."""
        text = "".join(c if c.isprintable() else " " for c in message)[:MAX_ERROR_CHARS]
        return cls(size=None, error=text, error_status=status)

    def to_json(self) -> bytes:
        doc = {
            "size": self.size,
            "stored": self.stored,
            "complete": self.complete,
            "cached": self.cached,
            "error": self.error,
            "error_status": self.error_status,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PreheatReply:
        """Parse and validate a root's reply; raises only P2PProtocolError."""
        if not isinstance(data, (bytes, bytearray, str)):
            raise P2PProtocolError("preheat reply must be bytes or text")
        if len(data) > MAX_REPLY_BYTES:
            raise P2PProtocolError(f"preheat reply larger than {MAX_REPLY_BYTES} bytes")
        try:
            doc = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise P2PProtocolError(f"preheat reply is not JSON: {str(e)[:120]}") from None
        if not isinstance(doc, dict) or set(doc) != _REPLY_KEYS:
            raise P2PProtocolError(f"preheat reply must be an object with {sorted(_REPLY_KEYS)}")
        return cls(**doc)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
