"""P2P messages between agents and roots, without I/O: targets, ranges, limits.

Theory of operation
-------------------
The P2P port (docs/ARCHITECTURE.md, "The swarm") speaks HTTP/1.1, one
request per chunk or per plan.  Everything about those messages that can be decided without a
socket or a clock lives here and in two siblings, so the trio adapters only move bytes:
:mod:`agent.swarm.signing` authenticates every request (the x-pollen-* headers) and
:mod:`agent.swarm.plan` holds the root's reply to a plan request.  This module holds what both
build on: the limits, the errors, the field checks, and

* **Targets.**  Two endpoints, each a frozen dataclass that validates itself and renders its
  own target, and one parser for the server side (:func:`parse_target`):

  - ``GET|HEAD /p2p/v1/chunk/<digest>/<index>`` → :class:`ChunkTarget` (``rpc:pread`` /
    ``rpc:stat``);
  - ``GET /p2p/v1/plan/<digest>?upstream=&repo=&want=&have=&done=&failed=&missing=&finishing=
    &past=&depth=&fresh=&poll=&n=&handed=`` →
    :class:`PlanTarget`, an agent asking the owning root for work.

  (A third, ``/p2p/v1/preheat/``, is `pollen preheat`'s: :mod:`agent.swarm.preheat`, whose
  ``parse_p2p_target`` the server calls for all three.)

  Query values are ``have=0-5,8,10-12`` (compact ranges, :func:`encode_ranges`),
  ``done=<chunk>@<node>,...`` (transfers finished and verified) and
  ``failed=<chunk>@<node>,<chunk>!@<node>,...`` (transfers that failed; ``!`` marks a source
  that served bytes whose sha256 was wrong) and ``missing=<chunk>@<node>,...`` (the source
  answered 404: it no longer holds the chunk) and ``finishing=<chunk>@<node>,...`` (transfers
  in their last bytes: their slots may take the next transfer).  Brackets of IPv6 node ids
  are percent-encoded (``%5B``/``%5D``, RFC 3986 keeps ``[`` and ``]`` out of queries);
  nothing else is encoded and no other ``%`` is accepted.  Numbers are plain decimals without
  leading zeros, so a target has one spelling.

  Every field has a bound, chosen so that the longest possible plan request line (sha512
  digest, longest upstream and repository, the worst ``have`` of a 2000-chunk layer,
  MAX_REPORTS reports naming the longest node ids) stays under 8 KiB; tests check the sum.
  A ``have`` that does not fit (a very fragmented holding of a bigger layer) is trimmed by
  the agent with :func:`clip_ranges`: reporting fewer chunks is always safe, the root then
  merely does not use the others as sources yet.

Which root an agent asks about a layer (rendezvous order, a busy root's handoffs) is
:mod:`agent.swarm.ownership`'s.

Every error is a :class:`P2PError` carrying an HTTP status hint, as h11's ProtocolError does
(:class:`P2PProtocolError` here and in plan.py, :class:`agent.swarm.signing.P2PAuthError`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.errors import RegistryError
from agent.core.hostport import join_hostport, split_hostport
from agent.registry.routes import parse_digest, validate_name

CHUNK_PREFIX = "/p2p/v1/chunk/"
PLAN_PREFIX = "/p2p/v1/plan/"

# A request line is "GET " + target + " HTTP/1.1\r\n"; it must stay below 8 KiB.
REQUEST_LINE_MAX = 8192
TARGET_MAX = REQUEST_LINE_MAX - len("GET  HTTP/1.1\r\n") - 1

MAX_CHUNKS = 1 << 20  # chunk indexes are below this (1 TiB of layer at 1 MiB chunks)
MAX_CHUNK_SIZE = 1 << 30
MAX_WANT = 256  # assignments one plan request may ask for
MAX_DEPTH = 16  # transfers a node may ask to have in flight at once (`PlanTarget.depth`)
# Chunks ahead of a node's first missing one a root's schedule assigns from (its look-ahead,
# `LayerSchedule.window`); a node's ring must hold that many besides its transfers.
ROOT_WINDOW = 8
MAX_NONCE = 1 << 63  # a plan request's nonce is below this
MAX_REPORTS = 16  # done + failed entries in one plan request; more wait for the next ask
MAX_HAVE_CHARS = 6000  # encoded `have`; the worst 2000-chunk holding needs 5928
NODE_MAX = 80  # a node id, host:port ("[v6]:port" is at most 47)
UPSTREAM_MAX = 253 + len(":65535")  # a DNS name and a port
MAX_ASSIGNMENTS = 1024  # in one plan reply
MAX_PLAN_HASHES = 1 << 16  # chunk sha256s in one plan reply
MAX_PLAN_BYTES = 8 << 20  # a plan reply's JSON
MAX_RETRY_AFTER = 60.0  # seconds
MAX_ERROR_CHARS = 1024
# The client's registry credential, passed to a root only over P2P TLS.
AUTHORIZATION_HEADER = b"x-pollen-authorization"

_DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,18}")  # up to MAX_NONCE's 19 digits
HEX64_RE = re.compile(r"[0-9a-f]{64}")  # a sha256 in hex, as signatures and plans spell it
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


# --------------------------------------------------------------------------------------------
# Field validation shared by targets, signatures (signing.py) and plan replies (plan.py)


def is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass and never a count


def parse_decimal(text: str, what: str, limit: int) -> int:
    """A decimal in [0, limit), spelled without sign, spaces or leading zeros."""
    if not _DECIMAL_RE.fullmatch(text):
        raise P2PProtocolError(f"{what} must be a decimal number, got {text[:40]!r}")
    value = int(text)
    if value >= limit:
        raise P2PProtocolError(f"{what} {value} out of range (below {limit})")
    return value


def check_index(value: object, what: str, limit: int = MAX_CHUNKS) -> int:
    """An integer (not a bool) in [0, limit)."""
    if not is_int(value):
        raise P2PProtocolError(f"{what} must be an integer, got {value!r:.40}")
    assert isinstance(value, int)
    if not 0 <= value < limit:
        bound = f"0..{limit - 1}" if limit else "the layer has no chunks yet"
        raise P2PProtocolError(f"{what} {value} out of range ({bound})")
    return value


def check_digest(value: object) -> str:
    if not isinstance(value, str):
        raise P2PProtocolError(f"digest must be a string, got {value!r:.80}")
    return _canonical_digest(value)


# A node asks about the same few layers again and again (every plan request names one): each
# spelling is checked once (an exception is never cached).
@functools.lru_cache(maxsize=4096)
def _canonical_digest(value: str) -> str:
    try:
        return str(parse_digest(value))
    except RegistryError as e:
        raise P2PProtocolError(e.message) from None


def check_repo(value: object) -> str:
    if not isinstance(value, str):
        raise P2PProtocolError(f"repository must be a string, got {value!r:.80}")
    return _checked_repo(value)


@functools.lru_cache(maxsize=4096)
def _checked_repo(value: str) -> str:
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
    return _canonical_node(text)


@functools.lru_cache(maxsize=4096)
def _canonical_node(text: str) -> str:
    """parse_node for a string. Every report and assignment names nodes, and a cluster has
    few of them, so each spelling is checked once (an exception is never cached)."""
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
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        pass  # a DNS name, checked by split_hostport
    return join_hostport(host, port)


def check_upstream(value: object) -> str:
    """An upstream key as in Config.upstreams (``Upstream.key``): ``host[:port]``."""
    if not isinstance(value, str):
        raise P2PProtocolError(f"upstream must be a string, got {value!r:.80}")
    return _checked_upstream(value)


@functools.lru_cache(maxsize=1024)
def _checked_upstream(value: str) -> str:
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
# Chunk index ranges: "0-5,8,10-12"


def encode_ranges(indexes: Iterable[int]) -> str:
    """Sorted, merged runs: ``{0,1,2,3,4,5,8,10,11,12}`` → ``"0-5,8,10-12"``.

    This is the shortest spelling in this grammar, so decode → encode never grows a text."""
    values = sorted(set(indexes))
    if values and (not all(is_int(v) for v in values) or values[0] < 0):
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
        lo = parse_decimal(first, "range start", limit)
        hi = parse_decimal(last, "range end", limit) if dash else lo
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


def quote_brackets(value: str) -> str:
    return value.replace("[", "%5B").replace("]", "%5D")


def unquote_brackets(value: str) -> str:
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
        check_digest(self.digest)
        check_index(self.index, "chunk index")

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
      when the source served bytes whose sha256 was wrong (not merely unreachable);
    - ``missing``: ``(chunk, source)`` transfers the source answered 404: it does not hold
      that chunk (any more), which is no fault of the source;
    - ``finishing``: ``(chunk, source)`` transfers in their last bytes (about a plan round trip
      from their end): the root may give both links their next transfer now (pipelining);
    - ``past``: chunks below this index the agent no longer wants (its cache keeps a window of
      the layer and its readers are beyond them);
    - ``depth``: transfers the agent keeps in flight at once (1..MAX_DEPTH, `LayerPlanner.depth`);
    - ``fresh``: the first request of a new download of the layer on that node: whatever the
      root knew of the node for this layer (holdings, transfers, assignments) is from before
      (a restart, an earlier download that failed) and is forgotten;
    - ``poll``: the root may hold the request until it has work for the agent (the agent's
      standing request for work); without it the root answers at once (a report sent the
      moment a transfer ends, so the sources' slots free without delay);
    - ``nonce``: makes each request (and its signature) unique, so a root can answer each
      once (`agent.swarm.replay`); 0: none;
    - ``handed``: the layer's first root handed it to this one (`Plan.handoff`), or the agent
      could not follow a handoff: the root asked takes the layer (`agent.swarm.ownership`).
    Node ids are stored canonical (:func:`parse_node`).
    """

    digest: str
    upstream: str
    repo: str
    want: int
    have: frozenset[int] | None = None
    done: tuple[tuple[int, str], ...] = ()
    failed: tuple[tuple[int, str, bool], ...] = ()
    missing: tuple[tuple[int, str], ...] = ()
    finishing: tuple[tuple[int, str], ...] = ()
    past: int = 0
    depth: int = 1
    fresh: bool = False
    poll: bool = False
    nonce: int = 0
    handed: bool = False

    def __post_init__(self) -> None:
        if not all(type(flag) is bool for flag in (self.poll, self.fresh, self.handed)):
            raise P2PProtocolError("poll, fresh and handed must be true or false")
        check_index(self.nonce, "nonce", MAX_NONCE)
        check_digest(self.digest)
        check_upstream(self.upstream)
        check_repo(self.repo)
        check_index(self.want, "want", MAX_WANT + 1)
        check_index(self.past, "past", MAX_CHUNKS + 1)
        if not 1 <= check_index(self.depth, "depth", MAX_DEPTH + 1):
            raise P2PProtocolError(f"depth {self.depth} out of range (1..{MAX_DEPTH})")
        if self.have is not None:
            if isinstance(self.have, (str, bytes)) or not isinstance(self.have, Iterable):
                raise P2PProtocolError("have must be a set of chunk indexes")
            have = frozenset(self.have)
            for index in have:
                check_index(index, "have index")
            if len(encode_ranges(have)) > MAX_HAVE_CHARS:
                raise P2PProtocolError(
                    f"have needs more than {MAX_HAVE_CHARS} characters; trim it with clip_ranges"
                )
            object.__setattr__(self, "have", have)
        failed = tuple(self.failed)
        reports = len(tuple(self.done)) + len(tuple(self.missing)) + len(tuple(self.finishing))
        if reports + len(failed) > MAX_REPORTS:
            raise P2PProtocolError(
                f"more than {MAX_REPORTS} done/failed/missing/finishing reports in one request; "
                "send the rest with the next"
            )
        checked_failed = []
        for entry in failed:
            if not isinstance(entry, tuple) or len(entry) != 3 or type(entry[2]) is not bool:
                raise P2PProtocolError(
                    f"failed entries are (chunk, source, bad), got {entry!r:.80}"
                )
            chunk, source, bad = entry
            checked_failed.append((check_index(chunk, "failed chunk"), parse_node(source), bad))
        object.__setattr__(self, "done", _check_pairs(self.done, "done"))
        object.__setattr__(self, "failed", tuple(checked_failed))
        object.__setattr__(self, "missing", _check_pairs(self.missing, "missing"))
        object.__setattr__(self, "finishing", _check_pairs(self.finishing, "finishing"))

    def target(self) -> str:
        params = [
            f"upstream={quote_brackets(self.upstream)}",
            f"repo={self.repo}",
            f"want={self.want}",
        ]
        if self.have is not None:
            params.append(f"have={encode_ranges(self.have)}")
        for name, pairs in (("done", self.done), ("missing", self.missing)):
            if pairs:
                params.append(f"{name}=" + ",".join(f"{c}@{quote_brackets(n)}" for c, n in pairs))
        if self.failed:
            params.append(
                "failed="
                + ",".join(
                    f"{c}{'!' if bad else ''}@{quote_brackets(n)}" for c, n, bad in self.failed
                )
            )
        if self.finishing:
            params.append(
                "finishing=" + ",".join(f"{c}@{quote_brackets(n)}" for c, n in self.finishing)
            )
        if self.past:
            params.append(f"past={self.past}")
        if self.depth != 1:
            params.append(f"depth={self.depth}")
        if self.fresh:
            params.append("fresh=1")
        if self.poll:
            params.append("poll=1")
        if self.nonce:
            params.append(f"n={self.nonce}")
        if self.handed:
            params.append("handed=1")
        return f"{PLAN_PREFIX}{self.digest}?{'&'.join(params)}"


P2PTarget = ChunkTarget | PlanTarget
_PLAN_PARAMS = (
    "upstream",
    "repo",
    "want",
    "have",
    "done",
    "failed",
    "missing",
    "finishing",
    "past",
    "depth",
    "fresh",
    "poll",
    "n",
    "handed",
)
_PLAN_REQUIRED = ("upstream", "repo", "want")


def split_target(method: str, target: str) -> tuple[str, str, str]:
    """A target's path, "?" (or "") and query, once its length and characters are checked
    (the checks every P2P endpoint's parser starts with)."""
    if not isinstance(method, str) or not isinstance(target, str):
        raise P2PProtocolError("method and target must be strings")
    if len(target) > TARGET_MAX:
        raise P2PProtocolError(
            f"request target longer than {TARGET_MAX} characters", status_hint=414
        )
    if not _TARGET_CHARS_RE.fullmatch(target) or "#" in target:
        raise P2PProtocolError("request target has characters outside visible ASCII or a '#'")
    return target.partition("?")


def parse_target(method: str, target: str) -> P2PTarget:
    """A P2P request's method and target → ChunkTarget or PlanTarget.

    Raises only P2PProtocolError: 404 for an unknown path, 405 for a wrong method, 414 for a
    target over TARGET_MAX, 400 for anything malformed.
    """
    path, has_query, query = split_target(method, target)
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
        digest = check_digest(parts[0])
        return ChunkTarget(digest=digest, index=parse_decimal(parts[1], "chunk index", MAX_CHUNKS))
    if path.startswith(PLAN_PREFIX):
        digest_text = path[len(PLAN_PREFIX) :]
        if "/" in digest_text:
            raise P2PProtocolError(
                f"expected {PLAN_PREFIX}<digest>, got {path[:120]!r}", status_hint=404
            )
        if method != "GET":
            raise P2PProtocolError(f"method {method[:20]} not allowed on plans", status_hint=405)
        digest = check_digest(digest_text)
        return _parse_plan_query(digest, query)
    raise P2PProtocolError(f"no P2P endpoint at {path[:120]!r}", status_hint=404)


def parse_query(query: str, allowed: Iterable[str], what: str) -> dict[str, str]:
    """A P2P target's query: each key once, known (`allowed`), with a value (unquoted)."""
    params: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if key not in allowed:
            raise P2PProtocolError(f"unknown {what} parameter {key[:40]!r}")
        if not eq:
            raise P2PProtocolError(f"{what} parameter {key} has no value")
        if key in params:
            raise P2PProtocolError(f"{what} parameter {key} given twice")
        params[key] = unquote_brackets(value)
    return params


def _parse_plan_query(digest: str, query: str) -> PlanTarget:
    params = parse_query(query, _PLAN_PARAMS, "plan")
    missing = [k for k in _PLAN_REQUIRED if k not in params]
    if missing:
        raise P2PProtocolError("plan request lacks " + ", ".join(missing))
    have: frozenset[int] | None = None
    if "have" in params:
        if len(params["have"]) > MAX_HAVE_CHARS:
            raise P2PProtocolError(f"have longer than {MAX_HAVE_CHARS} characters")
        have = decode_ranges(params["have"], MAX_CHUNKS)

    def pairs(name: str) -> tuple[tuple[int, str], ...]:  # (chunk, node) reports
        return tuple((c, n) for c, n, _ in _parse_reports(params.get(name, ""), name, marks=False))

    flags = {name: params.get(name, "0") for name in ("poll", "fresh", "handed")}
    for name, text in flags.items():
        if text not in ("0", "1"):
            raise P2PProtocolError(f"{name} must be 0 or 1, got {text[:20]!r}")
    return PlanTarget(
        digest=digest,
        upstream=params["upstream"],
        repo=params["repo"],
        want=parse_decimal(params["want"], "want", MAX_WANT + 1),
        have=have,
        done=pairs("done"),
        failed=tuple(_parse_reports(params.get("failed", ""), "failed", marks=True)),
        missing=pairs("missing"),
        finishing=pairs("finishing"),
        past=parse_decimal(params.get("past", "0"), "past", MAX_CHUNKS + 1),
        depth=parse_decimal(params.get("depth", "1"), "depth", MAX_DEPTH + 1),
        fresh=flags["fresh"] == "1",
        poll=flags["poll"] == "1",
        nonce=parse_decimal(params.get("n", "0"), "n", MAX_NONCE),
        handed=flags["handed"] == "1",
    )


def _check_pairs(entries: Iterable[object], what: str) -> tuple[tuple[int, str], ...]:
    """``(chunk, source)`` report entries, checked; node ids canonical."""
    checked = []
    for entry in tuple(entries):
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise P2PProtocolError(f"{what} entries are (chunk, source), got {entry!r:.80}")
        chunk, source = entry
        checked.append((check_index(chunk, f"{what} chunk"), parse_node(source)))
    return tuple(checked)


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
        chunk = parse_decimal(chunk_text, f"{what} chunk", MAX_CHUNKS)
        out.append((chunk, parse_node(node_text), bad))
    return out
