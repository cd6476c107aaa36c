"""P2P messages between agents and roots, without I/O: signing, targets, plan replies.

Theory of operation
-------------------
The P2P port (SPEC.md "Interfaces", ARCHITECTURE.md "The swarm") speaks HTTP/1.1, one
request per chunk or per plan.  Everything about those messages that can be decided without a
socket or a clock lives here, so the trio adapters only move bytes:

* **Authentication.**  Every request carries ``x-pollen-version``, ``x-pollen-time`` (unix
  seconds), ``x-pollen-node`` (the sender's ``host:port``) and ``x-pollen-auth``, the hex
  HMAC-SHA256 under the cluster token of a length-prefixed encoding of version, time, node,
  method and target (:func:`sign`).  :func:`verify` answers with the authenticated node id or
  raises :class:`P2PAuthError`; the adapter then sends 401 and no data.  A signed request can
  be replayed within the allowed clock skew; that is accepted, because every P2P request is an
  idempotent GET/HEAD and chunk bytes are public within the cluster (each is checked against
  its sha256 anyway).

* **Targets.**  Two endpoints, each a frozen dataclass that validates itself and renders its
  own target, and one parser for the server side (:func:`parse_target`):

  - ``GET|HEAD /p2p/v1/chunk/<digest>/<index>`` → :class:`ChunkTarget` (``rpc:pread`` /
    ``rpc:stat``);
  - ``GET /p2p/v1/plan/<digest>?upstream=&repo=&want=&have=&done=&failed=`` →
    :class:`PlanTarget`, an agent asking the owning root for work.

  Query values are ``have=0-5,8,10-12`` (compact ranges, :func:`encode_ranges`),
  ``done=<chunk>@<node>,...`` (transfers finished and verified) and
  ``failed=<chunk>@<node>,<chunk>!@<node>,...`` (transfers that failed; ``!`` marks a source
  that served bytes whose sha256 was wrong).  Brackets of IPv6 node ids are percent-encoded
  (``%5B``/``%5D``, RFC 3986 keeps ``[`` and ``]`` out of queries); nothing else is encoded
  and no other ``%`` is accepted.  Numbers are plain decimals without leading zeros, so a
  target has one spelling.

  Every field has a bound, chosen so that the longest possible plan request line (sha512
  digest, longest upstream and repository, the worst ``have`` of a 2000-chunk layer,
  MAX_REPORTS reports naming the longest node ids) stays under 8 KiB; tests check the sum.
  A ``have`` that does not fit (a very fragmented holding of a bigger layer) is trimmed by
  the agent with :func:`clip_ranges`: reporting fewer chunks is always safe, the root then
  merely does not use the others as sources yet.

* **Plan replies** (:class:`Plan`) are JSON.  A peer's reply is untrusted input:
  :meth:`Plan.from_json` checks every type, bound, index and hex string and raises only
  :class:`P2PProtocolError`.  Fields are added with a protocol version bump, so unknown keys
  are refused rather than ignored.

* **Ownership** (:func:`rendezvous_order`): the roots sorted by
  ``xxh3_64(f"{digest}|{root}")``, highest first; the owner of a layer is the first root in
  that order the asker believes alive.

Every error is a :class:`P2PError` carrying an HTTP status hint, as h11's ProtocolError does.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from agent.core.config import split_hostport
from agent.core.errors import RegistryError
from agent.registry.routes import parse_digest, validate_name

PROTOCOL_VERSION = 1
MAX_SKEW = 300  # seconds a request's x-pollen-time may differ from ours

HEADER_VERSION = b"x-pollen-version"
HEADER_TIME = b"x-pollen-time"
HEADER_NODE = b"x-pollen-node"
HEADER_AUTH = b"x-pollen-auth"
AUTH_HEADERS = (HEADER_VERSION, HEADER_TIME, HEADER_NODE, HEADER_AUTH)

CHUNK_PREFIX = "/p2p/v1/chunk/"
PLAN_PREFIX = "/p2p/v1/plan/"

# A request line is "GET " + target + " HTTP/1.1\r\n"; it must stay below 8 KiB.
REQUEST_LINE_MAX = 8192
TARGET_MAX = REQUEST_LINE_MAX - len("GET  HTTP/1.1\r\n") - 1

MAX_CHUNKS = 1 << 20  # chunk indexes are below this (1 TiB of layer at 1 MiB chunks)
MAX_CHUNK_SIZE = 1 << 30
MAX_WANT = 256  # assignments one plan request may ask for
MAX_REPORTS = 16  # done + failed entries in one plan request; more wait for the next ask
MAX_HAVE_CHARS = 6000  # encoded `have`; the worst 2000-chunk holding needs 5928
NODE_MAX = 80  # a node id, host:port ("[v6]:port" is at most 47)
UPSTREAM_MAX = 253 + len(":65535")  # a DNS name and a port
MAX_ASSIGNMENTS = 1024  # in one plan reply
MAX_PLAN_HASHES = 1 << 16  # chunk sha256s in one plan reply
MAX_PLAN_BYTES = 8 << 20  # a plan reply's JSON
MAX_RETRY_AFTER = 60.0  # seconds
MAX_ERROR_CHARS = 1024

_DOMAIN = b"pollen-p2p-auth\n"  # so these MACs can never be confused with another use of the key
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TARGET_CHARS_RE = re.compile(r"[\x21-\x7e]*")  # visible ASCII: no spaces, controls or UTF-8


# --------------------------------------------------------------------------------------------
# Errors


class P2PError(Exception):
    """A P2P message is wrong; ``status_hint`` is the HTTP status to answer it with."""

    default_status = 400

    def __init__(self, message: str, *, status_hint: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = self.default_status if status_hint is None else status_hint


class P2PProtocolError(P2PError):
    """A malformed target, field or plan reply (400 unless the hint says otherwise)."""


class P2PAuthError(P2PError):
    """The request is not from a cluster member: 401 and no data.  ``reason`` says why, for
    the log only (the peer gets no detail beyond the status)."""

    default_status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Field validation shared by targets and replies


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass and never a count


def _parse_decimal(text: str, what: str, limit: int) -> int:
    """A decimal in [0, limit), spelled without sign, spaces or leading zeros."""
    if not _DECIMAL_RE.fullmatch(text):
        raise P2PProtocolError(f"{what} must be a decimal number, got {text[:40]!r}")
    value = int(text)
    if value >= limit:
        raise P2PProtocolError(f"{what} {value} out of range (below {limit})")
    return value


def _check_index(value: object, what: str, limit: int = MAX_CHUNKS) -> int:
    if not _is_int(value):
        raise P2PProtocolError(f"{what} must be an integer, got {value!r:.40}")
    assert isinstance(value, int)
    if not 0 <= value < limit:
        bound = f"0..{limit - 1}" if limit else "the layer has no chunks yet"
        raise P2PProtocolError(f"{what} {value} out of range ({bound})")
    return value


def _check_digest(value: object) -> str:
    if not isinstance(value, str):
        raise P2PProtocolError(f"digest must be a string, got {value!r:.80}")
    try:
        return str(parse_digest(value))
    except RegistryError as e:
        raise P2PProtocolError(e.message) from None


def _check_repo(value: object) -> str:
    if not isinstance(value, str):
        raise P2PProtocolError(f"repository must be a string, got {value!r:.80}")
    try:
        return validate_name(value)
    except RegistryError as e:
        raise P2PProtocolError(e.message) from None


def parse_node(text: object) -> str:
    """Validate a node id ``host:port`` (IPv6 in brackets) and return its canonical spelling:
    lower case, IPv6 compressed.  Node ids are compared as strings, so every layer keeps them
    canonical."""
    if not isinstance(text, str):
        raise P2PProtocolError(f"node id must be a string, got {text!r:.80}")
    if len(text) > NODE_MAX:
        raise P2PProtocolError(f"node id longer than {NODE_MAX} characters: {text[:40]!r}...")
    if not text or not _TARGET_CHARS_RE.fullmatch(text) or "%" in text:
        raise P2PProtocolError(f"node id must be host:port, got {text!r}")
    try:
        host, port = split_hostport(text)
    except ValueError as e:
        raise P2PProtocolError(f"bad node id {text!r}: {e}") from None
    if port is None:
        raise P2PProtocolError(f"node id {text!r} needs a port (host:port)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"  # a DNS name, checked by split_hostport
    if address.version == 6:
        return f"[{address.compressed}]:{port}"
    return f"{address.compressed}:{port}"


def _check_upstream(value: object) -> str:
    """An upstream key as in Config.upstreams (``Upstream.key``): ``host[:port]``."""
    if not isinstance(value, str):
        raise P2PProtocolError(f"upstream must be a string, got {value!r:.80}")
    if len(value) > UPSTREAM_MAX:
        raise P2PProtocolError(f"upstream longer than {UPSTREAM_MAX} characters")
    if not value or value != value.lower() or not _TARGET_CHARS_RE.fullmatch(value):
        raise P2PProtocolError(f"upstream must be a lower-case host[:port], got {value!r}")
    if "%" in value:
        raise P2PProtocolError(f"upstream must be a lower-case host[:port], got {value!r}")
    try:
        split_hostport(value)
    except ValueError as e:
        raise P2PProtocolError(f"bad upstream {value!r}: {e}") from None
    return value


# --------------------------------------------------------------------------------------------
# Request signing


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
    if not _is_int(version) or not _is_int(time):
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
        raise P2PAuthError(f"stale request: sent {now - sent:.0f} s ago (limit {max_skew:g} s)")
    if sent > now + max_skew:
        raise P2PAuthError(
            f"request from the future: {sent - now:.0f} s ahead (limit {max_skew:g} s)"
        )
    node_text = found[HEADER_NODE]
    try:
        node = parse_node(node_text)
    except P2PProtocolError as e:
        raise P2PAuthError(f"bad x-pollen-node: {e.message}") from None
    auth_text = found[HEADER_AUTH]
    if not _HEX64_RE.fullmatch(auth_text):
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


# --------------------------------------------------------------------------------------------
# Chunk index ranges: "0-5,8,10-12"


def encode_ranges(indexes: Iterable[int]) -> str:
    """Sorted, merged runs: ``{0,1,2,3,4,5,8,10,11,12}`` → ``"0-5,8,10-12"``.

    This is the shortest spelling in this grammar, so decode → encode never grows a text."""
    values = sorted(set(indexes))
    if values and (not all(_is_int(v) for v in values) or values[0] < 0):
        raise P2PProtocolError("chunk indexes must be non-negative integers")
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def decode_ranges(text: str, limit: int) -> frozenset[int]:
    """Parse ``"0-5,8,10-12"`` (any order, overlaps allowed); every index must be below
    ``limit`` and the ranges together may name at most ``limit`` indexes (overlaps counted
    twice), so the work done is bounded by ``limit`` whatever the text."""
    if not isinstance(text, str):
        raise P2PProtocolError(f"ranges must be a string, got {text!r:.40}")
    if text == "":
        return frozenset()
    found: set[int] = set()
    total = 0
    for item in text.split(","):
        first, dash, last = item.partition("-")
        lo = _parse_decimal(first, "range start", limit)
        hi = _parse_decimal(last, "range end", limit) if dash else lo
        if hi < lo:
            raise P2PProtocolError(f"range {item!r} runs backwards")
        total += hi - lo + 1
        if total > limit:
            raise P2PProtocolError(f"ranges name more than {limit} indexes")
        found.update(range(lo, hi + 1))
    return frozenset(found)


def clip_ranges(indexes: Iterable[int], max_chars: int = MAX_HAVE_CHARS) -> frozenset[int]:
    """The lowest of ``indexes`` whose encoding fits in ``max_chars`` (all of them when they
    fit).  For an agent whose holdings are too fragmented to report in one request."""
    values = sorted(set(indexes))
    text = encode_ranges(values)
    if len(text) <= max_chars:
        return frozenset(values)
    cut = text[: max_chars + 1]
    cut = cut[: cut.rfind(",")] if "," in cut else ""  # whole runs only
    kept = decode_ranges(cut, values[-1] + 1) if cut else frozenset()
    return kept


# --------------------------------------------------------------------------------------------
# Targets


def _quote(value: str) -> str:
    return value.replace("[", "%5B").replace("]", "%5D")


def _unquote(value: str) -> str:
    for encoded, plain in (("%5B", "["), ("%5b", "["), ("%5D", "]"), ("%5d", "]")):
        value = value.replace(encoded, plain)
    if "%" in value:
        raise P2PProtocolError(f"unexpected percent-encoding in {value[:60]!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ChunkTarget:
    """``GET|HEAD /p2p/v1/chunk/<digest>/<index>``: a chunk's bytes (GET) or the layer's
    length (HEAD)."""

    digest: str
    index: int

    def __post_init__(self) -> None:
        _check_digest(self.digest)
        _check_index(self.index, "chunk index")

    def target(self) -> str:
        return f"{CHUNK_PREFIX}{self.digest}/{self.index}"


@dataclass(frozen=True, kw_only=True)
class PlanTarget:
    """``GET /p2p/v1/plan/<digest>?...``: an agent asks the layer's owning root for work.

    - ``upstream``, ``repo``: where the layer comes from (``Upstream.key``, repository name),
      so the root can fetch it from the origin;
    - ``want``: how many new assignments the agent can take (its free download slots; 0 only
      reports);
    - ``have``: the chunks the agent holds, or None when it does not report them this time;
    - ``done``: ``(chunk, source)`` transfers finished and verified since the last ask;
    - ``failed``: ``(chunk, source, bad)`` transfers that failed since the last ask; ``bad``
      when the source served bytes whose sha256 was wrong (not merely unreachable or 404);
    - ``poll``: the root may hold the request until it has work for the agent (the agent's
      standing request for work); without it the root answers at once (a report sent the
      moment a transfer ends, so the sources' slots free without delay).
    Node ids are stored canonical (:func:`parse_node`).
    """

    digest: str
    upstream: str
    repo: str
    want: int
    have: frozenset[int] | None = None
    done: tuple[tuple[int, str], ...] = ()
    failed: tuple[tuple[int, str, bool], ...] = ()
    poll: bool = False

    def __post_init__(self) -> None:
        if type(self.poll) is not bool:
            raise P2PProtocolError("poll must be true or false")
        _check_digest(self.digest)
        _check_upstream(self.upstream)
        _check_repo(self.repo)
        _check_index(self.want, "want", MAX_WANT + 1)
        if self.have is not None:
            if isinstance(self.have, (str, bytes)) or not isinstance(self.have, Iterable):
                raise P2PProtocolError("have must be a set of chunk indexes")
            have = frozenset(self.have)
            for index in have:
                _check_index(index, "have index")
            if len(encode_ranges(have)) > MAX_HAVE_CHARS:
                raise P2PProtocolError(
                    f"have needs more than {MAX_HAVE_CHARS} characters; trim it with clip_ranges"
                )
            object.__setattr__(self, "have", have)
        done = tuple(self.done)
        failed = tuple(self.failed)
        if len(done) + len(failed) > MAX_REPORTS:
            raise P2PProtocolError(
                f"more than {MAX_REPORTS} done/failed reports in one request; "
                "send the rest with the next"
            )
        checked_done = []
        for entry in done:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise P2PProtocolError(f"done entries are (chunk, source), got {entry!r:.80}")
            chunk, source = entry
            checked_done.append((_check_index(chunk, "done chunk"), parse_node(source)))
        checked_failed = []
        for entry in failed:
            if not isinstance(entry, tuple) or len(entry) != 3 or type(entry[2]) is not bool:
                raise P2PProtocolError(
                    f"failed entries are (chunk, source, bad), got {entry!r:.80}"
                )
            chunk, source, bad = entry
            checked_failed.append((_check_index(chunk, "failed chunk"), parse_node(source), bad))
        object.__setattr__(self, "done", tuple(checked_done))
        object.__setattr__(self, "failed", tuple(checked_failed))

    def target(self) -> str:
        params = [
            f"upstream={_quote(self.upstream)}",
            f"repo={self.repo}",
            f"want={self.want}",
        ]
        if self.have is not None:
            params.append(f"have={encode_ranges(self.have)}")
        if self.done:
            params.append("done=" + ",".join(f"{c}@{_quote(n)}" for c, n in self.done))
        if self.failed:
            params.append(
                "failed="
                + ",".join(f"{c}{'!' if bad else ''}@{_quote(n)}" for c, n, bad in self.failed)
            )
        if self.poll:
            params.append("poll=1")
        return f"{PLAN_PREFIX}{self.digest}?{'&'.join(params)}"


P2PTarget = ChunkTarget | PlanTarget
_PLAN_PARAMS = ("upstream", "repo", "want", "have", "done", "failed", "poll")
_PLAN_REQUIRED = ("upstream", "repo", "want")


def parse_target(method: str, target: str) -> P2PTarget:
    """A P2P request's method and target → ChunkTarget or PlanTarget.

    Raises only P2PProtocolError: 404 for an unknown path, 405 for a wrong method, 414 for a
    target over TARGET_MAX, 400 for anything malformed.
    """
    if not isinstance(method, str) or not isinstance(target, str):
        raise P2PProtocolError("method and target must be strings")
    if len(target) > TARGET_MAX:
        raise P2PProtocolError(
            f"request target longer than {TARGET_MAX} characters", status_hint=414
        )
    if not _TARGET_CHARS_RE.fullmatch(target) or "#" in target:
        raise P2PProtocolError("request target has characters outside visible ASCII or a '#'")
    path, has_query, query = target.partition("?")
    if path.startswith(CHUNK_PREFIX):
        parts = path[len(CHUNK_PREFIX) :].split("/")
        if len(parts) != 2:
            raise P2PProtocolError(
                f"expected {CHUNK_PREFIX}<digest>/<index>, got {path[:120]!r}", status_hint=404
            )
        if method not in ("GET", "HEAD"):
            raise P2PProtocolError(f"method {method[:20]} not allowed on chunks", status_hint=405)
        if has_query:
            raise P2PProtocolError("chunk requests take no query")
        digest = _check_digest(parts[0])
        return ChunkTarget(digest=digest, index=_parse_decimal(parts[1], "chunk index", MAX_CHUNKS))
    if path.startswith(PLAN_PREFIX):
        digest_text = path[len(PLAN_PREFIX) :]
        if "/" in digest_text:
            raise P2PProtocolError(
                f"expected {PLAN_PREFIX}<digest>, got {path[:120]!r}", status_hint=404
            )
        if method != "GET":
            raise P2PProtocolError(f"method {method[:20]} not allowed on plans", status_hint=405)
        digest = _check_digest(digest_text)
        return _parse_plan_query(digest, query)
    raise P2PProtocolError(f"no P2P endpoint at {path[:120]!r}", status_hint=404)


def _parse_plan_query(digest: str, query: str) -> PlanTarget:
    params: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in _PLAN_PARAMS:
            raise P2PProtocolError(f"unknown plan parameter {key[:40]!r}")
        if not eq:
            raise P2PProtocolError(f"plan parameter {key} has no value")
        if key in params:
            raise P2PProtocolError(f"plan parameter {key} given twice")
        params[key] = _unquote(value)
    missing = [k for k in _PLAN_REQUIRED if k not in params]
    if missing:
        raise P2PProtocolError("plan request lacks " + ", ".join(missing))
    have: frozenset[int] | None = None
    if "have" in params:
        if len(params["have"]) > MAX_HAVE_CHARS:
            raise P2PProtocolError(f"have longer than {MAX_HAVE_CHARS} characters")
        have = decode_ranges(params["have"], MAX_CHUNKS)
    done = [(c, n) for c, n, _ in _parse_reports(params.get("done", ""), "done", marks=False)]
    failed = _parse_reports(params.get("failed", ""), "failed", marks=True)
    poll_text = params.get("poll", "0")
    if poll_text not in ("0", "1"):
        raise P2PProtocolError(f"poll must be 0 or 1, got {poll_text[:20]!r}")
    return PlanTarget(
        digest=digest,
        upstream=params["upstream"],
        repo=params["repo"],
        want=_parse_decimal(params["want"], "want", MAX_WANT + 1),
        have=have,
        done=tuple(done),
        failed=tuple(failed),
        poll=poll_text == "1",
    )


def _parse_reports(text: str, what: str, *, marks: bool) -> list[tuple[int, str, bool]]:
    """``3@10.0.0.1:65002,5!@[fd00::1]:65002`` → [(3, node, False), (5, node, True)]."""
    if not text:
        return []
    items = text.split(",")
    if len(items) > MAX_REPORTS:
        raise P2PProtocolError(f"more than {MAX_REPORTS} {what} entries")
    out = []
    for item in items:
        chunk_text, at, node_text = item.partition("@")
        if not at:
            raise P2PProtocolError(f"{what} entry {item[:80]!r} is not <chunk>@<node>")
        bad = marks and chunk_text.endswith("!")
        if bad:
            chunk_text = chunk_text[:-1]
        chunk = _parse_decimal(chunk_text, f"{what} chunk", MAX_CHUNKS)
        out.append((chunk, parse_node(node_text), bad))
    return out


# --------------------------------------------------------------------------------------------
# Plan replies


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A root's answer to a PlanTarget.

    - ``size``: the layer's length in bytes, None while the origin has not told the root yet;
    - ``chunk_size``: the swarm's chunk size for this layer (the root's);
    - ``chunk_sha256``: hex sha256 of chunks the root knows, at least every assigned chunk's
      (the agent checks each chunk it receives from a peer against it before caching it);
    - ``assignments``: ``(chunk, source node)`` transfers to start now; a chunk may appear with
      two sources near the end (endgame), a pair never twice;
    - ``complete``: the root has the whole layer and its digest matched;
    - ``error`` / ``error_status``: the origin refused or failed (e.g. 401, 404, 429 pass
      through to the client; 502 for unreachable); an error reply assigns nothing;
    - ``retry_after``: seconds to wait before asking again when there is nothing to do.
    """

    size: int | None
    chunk_size: int
    chunk_sha256: Mapping[int, str] = field(default_factory=dict)
    assignments: tuple[tuple[int, str], ...] = ()
    complete: bool = False
    error: str | None = None
    error_status: int | None = None
    retry_after: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.chunk_size) or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise P2PProtocolError(
                f"chunk_size must be an integer in 1..{MAX_CHUNK_SIZE}, got {self.chunk_size!r:.40}"
            )
        if self.size is None:
            count = 0
        else:
            if not _is_int(self.size) or self.size < 0:
                raise P2PProtocolError(
                    f"size must be a non-negative integer, got {self.size!r:.40}"
                )
            count = -(-self.size // self.chunk_size)
            if count > MAX_CHUNKS:
                raise P2PProtocolError(f"layer has more than {MAX_CHUNKS} chunks")
        if not isinstance(self.chunk_sha256, Mapping):
            raise P2PProtocolError("chunk_sha256 must map chunk indexes to hex sha256")
        if len(self.chunk_sha256) > MAX_PLAN_HASHES:
            raise P2PProtocolError(f"more than {MAX_PLAN_HASHES} chunk hashes in one plan")
        hashes: dict[int, str] = {}
        for index, digest in self.chunk_sha256.items():
            _check_index(index, "chunk_sha256 index", count)
            if not isinstance(digest, str) or not _HEX64_RE.fullmatch(digest):
                raise P2PProtocolError(
                    f"chunk_sha256[{index}] must be 64 lower-case hex digits, got {digest!r:.80}"
                )
            hashes[index] = digest
        object.__setattr__(self, "chunk_sha256", dict(sorted(hashes.items())))

        if isinstance(self.assignments, (str, bytes)) or not isinstance(self.assignments, Iterable):
            raise P2PProtocolError("assignments must be a list of (chunk, source) pairs")
        assignments = tuple(self.assignments)
        if len(assignments) > MAX_ASSIGNMENTS:
            raise P2PProtocolError(f"more than {MAX_ASSIGNMENTS} assignments in one plan")
        checked: list[tuple[int, str]] = []
        for entry in assignments:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise P2PProtocolError(f"assignments are (chunk, source), got {entry!r:.80}")
            chunk = _check_index(entry[0], "assigned chunk", count)
            if chunk not in hashes:
                raise P2PProtocolError(f"assigned chunk {chunk} comes without its sha256")
            pair = (chunk, parse_node(entry[1]))
            if pair in checked:
                raise P2PProtocolError(f"assignment {pair} given twice")
            checked.append(pair)
        object.__setattr__(self, "assignments", tuple(checked))

        if type(self.complete) is not bool:
            raise P2PProtocolError(f"complete must be true or false, got {self.complete!r:.40}")
        if self.complete and self.size is None:
            raise P2PProtocolError("a complete layer must have a size")
        if (self.error is None) != (self.error_status is None):
            raise P2PProtocolError("error and error_status go together")
        if self.error is not None:
            if not isinstance(self.error, str) or not self.error.isprintable():
                raise P2PProtocolError("error must be a printable string")
            if len(self.error) > MAX_ERROR_CHARS:
                raise P2PProtocolError(f"error longer than {MAX_ERROR_CHARS} characters")
            status = self.error_status
            if not (isinstance(status, int) and _is_int(status) and 400 <= status <= 599):
                raise P2PProtocolError(
                    f"error_status must be an HTTP error status, got {self.error_status!r:.40}"
                )
            if checked or self.complete:
                raise P2PProtocolError("an error reply neither assigns nor completes")
        retry = self.retry_after
        if isinstance(retry, bool) or not isinstance(retry, (int, float)):
            raise P2PProtocolError(f"retry_after must be a number, got {retry!r:.40}")
        if not (math.isfinite(retry) and 0 <= retry <= MAX_RETRY_AFTER):
            raise P2PProtocolError(f"retry_after must be in 0..{MAX_RETRY_AFTER:g} s, got {retry}")
        object.__setattr__(self, "retry_after", float(retry))

    @property
    def count(self) -> int | None:
        """Chunks in the layer, None while the size is unknown."""
        return None if self.size is None else -(-self.size // self.chunk_size)

    def to_json(self) -> bytes:
        doc = {
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunk_sha256": {str(i): h for i, h in self.chunk_sha256.items()},
            "assignments": [[c, n] for c, n in self.assignments],
            "complete": self.complete,
            "error": self.error,
            "error_status": self.error_status,
            "retry_after": self.retry_after,
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        """Parse and validate a peer's reply; raises only P2PProtocolError."""
        if not isinstance(data, (bytes, bytearray, str)):
            raise P2PProtocolError("plan reply must be bytes or text")
        if len(data) > MAX_PLAN_BYTES:
            raise P2PProtocolError(f"plan reply larger than {MAX_PLAN_BYTES} bytes")
        try:
            doc = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, ...
            raise P2PProtocolError(f"plan reply is not JSON: {str(e)[:120]}") from None
        if not isinstance(doc, dict):
            raise P2PProtocolError("plan reply must be a JSON object")
        keys = set(doc)
        expected = {
            "size",
            "chunk_size",
            "chunk_sha256",
            "assignments",
            "complete",
            "error",
            "error_status",
            "retry_after",
        }
        if keys != expected:
            extra, lacking = sorted(keys - expected), sorted(expected - keys)
            raise P2PProtocolError(
                f"plan reply fields wrong: unknown {extra[:5]}, missing {lacking}"
            )
        hashes = doc["chunk_sha256"]
        if not isinstance(hashes, dict):
            raise P2PProtocolError("chunk_sha256 must be a JSON object")
        by_index = {
            _parse_decimal(k, "chunk_sha256 index", MAX_CHUNKS): v for k, v in hashes.items()
        }
        assignments = doc["assignments"]
        if not isinstance(assignments, list):
            raise P2PProtocolError("assignments must be a JSON array")
        return cls(
            size=doc["size"],
            chunk_size=doc["chunk_size"],
            chunk_sha256=by_index,
            assignments=tuple(tuple(a) if isinstance(a, list) else a for a in assignments),
            complete=doc["complete"],
            error=doc["error"],
            error_status=doc["error_status"],
            retry_after=doc["retry_after"],
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# --------------------------------------------------------------------------------------------
# Ownership


def rendezvous_score(digest: str, root: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{digest}|{root}".encode())


def rendezvous_order(digest: str, roots: Sequence[str]) -> list[str]:
    """The roots in preference order for a layer: highest ``xxh3_64(f"{digest}|{root}")``
    first, ties broken by name; duplicates are dropped.

    The ownership rule: **the owner of a layer is the first root in this order that the asker
    believes alive.**  Every node computes it alone, from the roots' addresses exactly as
    configured (so every node must spell them the same way).  Each root owns about 1/R of the
    layers; when a root dies or is removed only the layers it owned move, each to the next
    root in its own order, spreading that root's load over the others.
    """
    return sorted(set(roots), key=lambda root: (-rendezvous_score(digest, root), root))
