"""HTTP Range math for blob responses (RFC 9110 §14), without I/O.

Only a single byte range is honoured; a multi-range or malformed header is ignored (the whole
blob is sent with 200), which RFC 9110 allows and every registry client handles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
# A position with more digits than this is past any blob (2**64 has 20): read as BEYOND, so
# that int() never meets a number longer than Python's limit for it (4300 digits, ValueError).
MAX_DIGITS = 20
BEYOND = 10**MAX_DIGITS


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return BEYOND if len(digits) > MAX_DIGITS else int(digits)


@dataclass(frozen=True, kw_only=True)
class ByteRange:
    """Half-open interval [start, end) of a blob."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, kw_only=True)
class RangeDecision:
    """What to answer: 200 for the whole blob, 206 for a part, 416 when unsatisfiable."""

    status: int
    range: ByteRange | None  # None for 416

    def headers(self, size: int) -> list[tuple[bytes, bytes]]:
        """Content-Length / Content-Range for this decision."""
        if self.status == 416:
            return [(b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")]
        assert self.range is not None
        hdrs = [(b"content-length", str(self.range.length).encode())]
        if self.status == 206:
            hdrs.append(
                (
                    b"content-range",
                    f"bytes {self.range.start}-{self.range.end - 1}/{size}".encode(),
                )
            )
        return hdrs


def decide_range(header: str | None, size: int) -> RangeDecision:
    """Decide the response to a request for a blob of ``size`` bytes with this Range header."""
    whole = RangeDecision(status=200, range=ByteRange(start=0, end=size))
    if header is None:
        return whole
    match = _RANGE_RE.match(header)
    if not match:
        return whole  # malformed or multi-range: ignore
    first, last = match.groups()
    if first == "" and last == "":
        return whole
    if first == "":
        suffix = _position(last)
        if suffix == 0 or size == 0:
            return RangeDecision(status=416, range=None)
        start = max(0, size - suffix)
        return RangeDecision(status=206, range=ByteRange(start=start, end=size))
    start = _position(first)
    end = size if last == "" else _position(last) + 1
    if last != "" and end - 1 < start:
        return whole  # invalid: ignore per RFC 9110
    if start >= size:
        return RangeDecision(status=416, range=None)
    return RangeDecision(status=206, range=ByteRange(start=start, end=min(end, size)))
