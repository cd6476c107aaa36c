"""P2P request signing, without I/O: every request proves it comes from a cluster member.

Theory of operation
-------------------
The P2P port (docs/ARCHITECTURE.md, "The swarm") speaks HTTP/1.1; the messages
themselves live in :mod:`agent.swarm.protocol`.  This module decides, without a socket or a
clock (the time is an argument), whether a request may be answered at all:

* Every request carries ``x-pollen-version``, ``x-pollen-time`` (unix seconds),
  ``x-pollen-node`` (the sender's ``host:port``) and ``x-pollen-auth``, the hex HMAC-SHA256
  under the cluster token of a length-prefixed encoding of version, time, node, method and
  target (:func:`sign`; :func:`request_headers` builds all four).
* :func:`verify` answers with the authenticated node id or raises :class:`P2PAuthError`; the
  adapter then sends 401 and no data.
  A signed request could be replayed within the allowed clock skew. Chunk requests are
  idempotent reads of bytes public within the cluster (each checked against its sha256), so
  that is harmless; plan requests change the root's state, so a root answers each once
  (:mod:`agent.swarm.replay`).
* A root's plan reply carries ``x-pollen-reply-auth``: the HMAC of the reply's body bound to
  the request's own ``x-pollen-auth`` (:func:`sign_reply`), so a chunk table or a size that
  anyone on the path altered, or a reply to another request, is refused
  (:func:`verify_reply`) and the agent treats that root as not answering.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable

from agent.swarm.protocol import HEX64_RE, P2PError, P2PProtocolError, is_int, parse_node

PROTOCOL_VERSION = 1
MAX_SKEW = 300  # seconds a request's x-pollen-time may differ from ours
CLOCK_REFUSAL = "clocks differ"  # what a refusal for the time says, for the sender to see


def is_clock_refusal(message: str) -> bool:
    """A refusal (its text, as the sender got it) for a time too far from the receiver's."""
    return CLOCK_REFUSAL in message


HEADER_VERSION = b"x-pollen-version"
HEADER_TIME = b"x-pollen-time"
HEADER_NODE = b"x-pollen-node"
HEADER_AUTH = b"x-pollen-auth"
HEADER_REPLY_AUTH = b"x-pollen-reply-auth"
AUTH_HEADERS = (HEADER_VERSION, HEADER_TIME, HEADER_NODE, HEADER_AUTH)

_DOMAIN = b"pollen-p2p-auth\n"  # so these MACs can never be confused with another use of the key
_REPLY_DOMAIN = b"pollen-p2p-reply\n"  # nor a reply's with a request's


class P2PAuthError(P2PError):
    """The request is not from a cluster member: 401 and no data.  ``reason`` says why, for
    the log only (the peer gets no detail beyond the status)."""

    default_status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _canonical(version: int, time: int, node: str, method: str, target: str) -> bytes:
    """Each field as ``<byte length>:<bytes>\\n``: no field can bleed into the next, whatever
    it contains, so two different requests never share a MAC input."""
    out = bytearray(_DOMAIN)
    for text in (str(version), str(time), node, method, target):
        data = text.encode("utf-8", "surrogatepass")
        out += b"%d:%s\n" % (len(data), data)
    return bytes(out)


def sign(token: bytes, *, version: int, time: int, node: str, method: str, target: str) -> str:
    """Hex HMAC-SHA256 of a request under the cluster token."""
    if not token:
        raise ValueError("empty cluster token: refusing to sign P2P requests")
    if not is_int(version) or not is_int(time):
        raise TypeError("version and time must be integers")
    message = _canonical(version, time, node, method, target)
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def request_headers(
    token: bytes, node: str, method: str, target: str, now: float
) -> list[tuple[bytes, bytes]]:
    """The four x-pollen-* headers for a request from ``node`` at unix time ``now``."""
    node = parse_node(node)
    seconds = math.floor(now)
    if seconds < 0:
        raise ValueError(f"time before the epoch: {now!r}")
    auth = sign(
        token, version=PROTOCOL_VERSION, time=seconds, node=node, method=method, target=target
    )
    return [
        (HEADER_VERSION, str(PROTOCOL_VERSION).encode()),
        (HEADER_TIME, str(seconds).encode()),
        (HEADER_NODE, node.encode()),
        (HEADER_AUTH, auth.encode()),
    ]


def verify(
    token: bytes,
    method: str,
    target: str,
    headers: Iterable[tuple[bytes, bytes]],
    now: float,
    *,
    max_skew: float = MAX_SKEW,
) -> str:
    """Check a request's x-pollen-* headers; return the sender's (canonical) node id.

    Raises P2PAuthError for a missing or repeated header, an unsupported version, a time more
    than ``max_skew`` seconds off ``now``, a malformed node id or a wrong signature.  A node
    without a token refuses everything.
    """
    if not token:
        raise P2PAuthError("no cluster token configured on this node")
    found: dict[bytes, str] = {}
    for name, value in headers:
        key = bytes(name).lower()
        if key not in AUTH_HEADERS:
            continue
        if key in found:
            raise P2PAuthError(f"repeated {key.decode()} header")
        try:
            found[key] = bytes(value).decode("ascii").strip()
        except UnicodeDecodeError:
            raise P2PAuthError(f"non-ASCII {key.decode()} header") from None
    missing = [h.decode() for h in AUTH_HEADERS if h not in found]
    if missing:
        raise P2PAuthError("missing " + ", ".join(missing))

    version_text = found[HEADER_VERSION]
    if not re.fullmatch(r"[0-9]{1,6}", version_text):
        raise P2PAuthError(f"malformed x-pollen-version {version_text[:20]!r}")
    if int(version_text) != PROTOCOL_VERSION:
        raise P2PAuthError(
            f"unsupported protocol version {int(version_text)} (this node speaks "
            f"{PROTOCOL_VERSION})"
        )
    time_text = found[HEADER_TIME]
    if not re.fullmatch(r"[0-9]{1,12}", time_text):
        raise P2PAuthError(f"malformed x-pollen-time {time_text[:20]!r}")
    sent = int(time_text)
    if sent < now - max_skew:
        raise P2PAuthError(
            f"{CLOCK_REFUSAL} (stale request): sent {now - sent:.0f} s ago (limit {max_skew:g} s)"
        )
    if sent > now + max_skew:
        raise P2PAuthError(
            f"{CLOCK_REFUSAL} (request from the future): {sent - now:.0f} s ahead "
            f"(limit {max_skew:g} s)"
        )
    node_text = found[HEADER_NODE]
    try:
        node = parse_node(node_text)
    except P2PProtocolError as e:
        raise P2PAuthError(f"bad x-pollen-node: {e.message}") from None
    auth_text = found[HEADER_AUTH]
    if not HEX64_RE.fullmatch(auth_text):
        raise P2PAuthError("malformed x-pollen-auth (64 lower-case hex digits expected)")
    want = sign(
        token,
        version=PROTOCOL_VERSION,
        time=sent,
        node=node_text,
        method=method,
        target=target,
    )
    if not hmac.compare_digest(want.encode(), auth_text.encode()):
        raise P2PAuthError("bad signature (wrong cluster token, or the request was altered)")
    return node


def sign_reply(token: bytes, request_auth: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of a reply `body` to the request whose x-pollen-auth was `request_auth`."""
    if not token:
        raise ValueError("empty cluster token: refusing to sign P2P replies")
    bound = request_auth.encode("ascii", "replace")
    message = _REPLY_DOMAIN + b"%d:%s\n" % (len(bound), bound) + body
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def request_auth(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The x-pollen-auth of a (signed) request's headers, '' when there is none."""
    for name, value in headers:
        if bytes(name).lower() == HEADER_AUTH:
            return bytes(value).decode("ascii", "replace").strip()
    return ""


def verify_reply(
    token: bytes, request_auth: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    """Check a reply's x-pollen-reply-auth against its body and the request it answers; raises
    P2PAuthError when it is missing, repeated or wrong."""
    found = [bytes(v) for n, v in headers if bytes(n).lower() == HEADER_REPLY_AUTH]
    if not found:
        raise P2PAuthError("unsigned reply")
    if len(found) > 1:
        raise P2PAuthError("repeated x-pollen-reply-auth header")
    want = sign_reply(token, request_auth, body)
    if not hmac.compare_digest(want.encode(), found[0].strip()):
        raise P2PAuthError("bad reply signature (altered, or an answer to another request)")
