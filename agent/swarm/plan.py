"""P2P plan replies, without I/O: a root's answer to an agent asking for work.

Theory of operation
-------------------
An agent asks the layer's owning root for work with a plan request
(:class:`agent.swarm.protocol.PlanTarget`); the root answers with a :class:`Plan` in JSON: the
layer's size and chunk size, the sha256 of the chunks it knows, the transfers to start now,
and whether the layer is complete or the origin failed.

A peer's reply is untrusted input: :meth:`Plan.from_json` checks every type, bound, index and
hex string and raises only :class:`~agent.swarm.protocol.P2PProtocolError`, whatever it is
fed.  Fields are added with a protocol version bump, so unknown keys are refused rather than
ignored.  The bounds (MAX_ASSIGNMENTS, MAX_PLAN_HASHES, MAX_PLAN_BYTES, ...) sit with the
protocol's other limits in :mod:`agent.swarm.protocol`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.cache.chunks import ChunkLayout
from agent.swarm.protocol import (
    HEX64_RE,
    MAX_ASSIGNMENTS,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_ERROR_CHARS,
    MAX_PLAN_BYTES,
    MAX_PLAN_HASHES,
    MAX_RETRY_AFTER,
    P2PProtocolError,
    check_index,
    is_int,
    parse_decimal,
    parse_node,
)


def check_error(error: object, status: object) -> None:
    """A reply's `error` and `error_status`: both or neither; a printable message of at most
    MAX_ERROR_CHARS, an HTTP error status (plans and preheat replies alike)."""
    if (error is None) != (status is None):
        raise P2PProtocolError("error and error_status go together")
    if error is None:
        return
    if not isinstance(error, str) or not error.isprintable():
        raise P2PProtocolError("error must be a printable string")
    if len(error) > MAX_ERROR_CHARS:
        raise P2PProtocolError(f"error longer than {MAX_ERROR_CHARS} characters")
    if not (is_int(status) and 400 <= status <= 599):  # type: ignore[operator]
        raise P2PProtocolError(f"error_status must be an HTTP error status, got {status!r:.40}")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A root's answer to a PlanTarget.

    - ``size``: the layer's length in bytes, None while the origin has not told the root yet;
    - ``chunk_size``: the swarm's chunk size for this layer (the root's);
    - ``head_chunk``: with the size, the length of the layer's first chunks (its head:
      `agent.cache.chunks`' rule from size and chunk size when not given); an agent that cuts
      the layer otherwise cannot use the root's chunk numbers;
    - ``chunk_sha256``: hex sha256 of chunks the root knows, at least every assigned chunk's
      (the agent checks each chunk it receives from a peer against it before caching it);
    - ``assignments``: ``(chunk, source node)`` transfers to start now; a chunk may appear with
      two sources near the end (endgame), a pair never twice;
    - ``complete``: the root has the whole layer and its digest matched;
    - ``table_sha256``: with ``complete``, the root's *seal*: the sha256 of the layer's chunk
      table (`table_digest`). The root vouches that bytes whose chunks hash to that table are
      the layer, so an agent holding such chunks need not hash the whole layer again (the
      reply's signature, `agent.swarm.signing.verify_reply`, says which root vouched);
    - ``error`` / ``error_status``: the origin refused or failed (e.g. 401, 404, 429 pass
      through to the client; 502 for unreachable); an error reply assigns nothing;
    - ``retry_after``: seconds to wait before asking again when there is nothing to do;
    - ``handoff``: this root hands the layer to that root (`agent.swarm.ownership`): ask it
      instead, with ``handed``; such a reply says nothing else. Sent only when set, so a reply
      without a handoff reads as before.
    """

    size: int | None
    chunk_size: int
    head_chunk: int | None = None
    chunk_sha256: Mapping[int, str] = field(default_factory=dict)
    assignments: tuple[tuple[int, str], ...] = ()
    complete: bool = False
    table_sha256: str | None = None
    error: str | None = None
    error_status: int | None = None
    retry_after: float = 0.0
    handoff: str | None = None

    def __post_init__(self) -> None:
        if not is_int(self.chunk_size) or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise P2PProtocolError(
                f"chunk_size must be an integer in 1..{MAX_CHUNK_SIZE}, got {self.chunk_size!r:.40}"
            )
        if self.size is None:
            count = 0
            if self.head_chunk is not None:
                raise P2PProtocolError("head_chunk comes with the size")
        else:
            if not is_int(self.size) or self.size < 0:
                raise P2PProtocolError(
                    f"size must be a non-negative integer, got {self.size!r:.40}"
                )
            head = self.head_chunk
            if head is not None and not (is_int(head) and 0 < head <= self.chunk_size):
                raise P2PProtocolError(
                    f"head_chunk must be an integer in 1..chunk_size, got {head!r:.40}"
                )
            layout = ChunkLayout(size=self.size, chunk_size=self.chunk_size, head_chunk=head or 0)
            object.__setattr__(self, "head_chunk", layout.head_chunk)  # not given: the rule
            count = layout.count
            if count > MAX_CHUNKS:
                raise P2PProtocolError(f"layer has more than {MAX_CHUNKS} chunks")
        if not isinstance(self.chunk_sha256, Mapping):
            raise P2PProtocolError("chunk_sha256 must map chunk indexes to hex sha256")
        if len(self.chunk_sha256) > MAX_PLAN_HASHES:
            raise P2PProtocolError(f"more than {MAX_PLAN_HASHES} chunk hashes in one plan")
        hashes: dict[int, str] = {}
        for index, digest in self.chunk_sha256.items():
            check_index(index, "chunk_sha256 index", count)
            if not isinstance(digest, str) or not HEX64_RE.fullmatch(digest):
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
            chunk = check_index(entry[0], "assigned chunk", count)
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
        if self.table_sha256 is not None:
            if not isinstance(self.table_sha256, str) or not HEX64_RE.fullmatch(self.table_sha256):
                raise P2PProtocolError("table_sha256 must be 64 lower-case hex digits")
            if not self.complete:
                raise P2PProtocolError("only a complete layer is sealed (table_sha256)")
        check_error(self.error, self.error_status)
        if self.error is not None:
            if checked or self.complete:
                raise P2PProtocolError("an error reply neither assigns nor completes")
        retry = self.retry_after
        if isinstance(retry, bool) or not isinstance(retry, (int, float)):
            raise P2PProtocolError(f"retry_after must be a number, got {retry!r:.40}")
        if not (math.isfinite(retry) and 0 <= retry <= MAX_RETRY_AFTER):
            raise P2PProtocolError(f"retry_after must be in 0..{MAX_RETRY_AFTER:g} s, got {retry}")
        object.__setattr__(self, "retry_after", float(retry))
        if self.handoff is not None:
            if not isinstance(self.handoff, str):
                raise P2PProtocolError("handoff must name a root")
            object.__setattr__(self, "handoff", parse_node(self.handoff))
            if self.size is not None or hashes or checked or self.complete or self.error:
                raise P2PProtocolError("a handoff reply says nothing else")

    @property
    def layout(self) -> ChunkLayout | None:
        """The layer's chunks, None while the size is unknown."""
        if self.size is None:
            return None
        return ChunkLayout(
            size=self.size, chunk_size=self.chunk_size, head_chunk=self.head_chunk or 0
        )

    @property
    def count(self) -> int | None:
        """Chunks in the layer, None while the size is unknown."""
        layout = self.layout
        return None if layout is None else layout.count

    def to_json(self) -> bytes:
        doc = {
            "size": self.size,
            "chunk_size": self.chunk_size,
            "head_chunk": self.head_chunk,
            "chunk_sha256": {str(i): h for i, h in self.chunk_sha256.items()},
            "assignments": [[c, n] for c, n in self.assignments],
            "complete": self.complete,
            "table_sha256": self.table_sha256,
            "error": self.error,
            "error_status": self.error_status,
            "retry_after": self.retry_after,
        }
        if self.handoff is not None:
            doc["handoff"] = self.handoff
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
            "head_chunk",
            "chunk_sha256",
            "assignments",
            "complete",
            "table_sha256",
            "error",
            "error_status",
            "retry_after",
        }
        if keys - {"handoff"} != expected:
            extra, lacking = sorted(keys - expected), sorted(expected - keys)
            raise P2PProtocolError(
                f"plan reply fields wrong: unknown {extra[:5]}, missing {lacking}"
            )
        hashes = doc["chunk_sha256"]
        if not isinstance(hashes, dict):
            raise P2PProtocolError("chunk_sha256 must be a JSON object")
        by_index = {
            parse_decimal(k, "chunk_sha256 index", MAX_CHUNKS): v for k, v in hashes.items()
        }
        assignments = doc["assignments"]
        if not isinstance(assignments, list):
            raise P2PProtocolError("assignments must be a JSON array")
        return cls(
            size=doc["size"],
            chunk_size=doc["chunk_size"],
            head_chunk=doc["head_chunk"],
            chunk_sha256=by_index,
            assignments=tuple(tuple(a) if isinstance(a, list) else a for a in assignments),
            complete=doc["complete"],
            table_sha256=doc["table_sha256"],
            error=doc["error"],
            error_status=doc["error_status"],
            retry_after=doc["retry_after"],
            handoff=doc.get("handoff"),
        )


def table_digest(chunk_sha256: Iterable[str]) -> str:
    """The seal's digest of a chunk table: sha256 of the chunks' hex sha256, in chunk order."""
    return hashlib.sha256("".join(chunk_sha256).encode("ascii")).hexdigest()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
