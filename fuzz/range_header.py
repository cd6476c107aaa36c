"""Target: a client's Range header against a blob's size (`agent.registry.ranges.decide_range`),
as the proxy decides a blob response.

The input is the blob size (8 bytes, big-endian, below 2**63) and then the header's value in
latin-1, as `Request.header` decodes it (no header when nothing follows the size).

Contract: no error at all (a malformed or multi-range header is answered with the whole
blob); 200 is the whole blob, 206 a non-empty part inside it, 416 only when nothing of it can
be sent; the headers of every decision encode, with a Content-Length equal to the part's
length and a Content-Range that names that part.
"""

from __future__ import annotations

import re

from agent.registry.ranges import decide_range

SIZE_BYTES = 8
_CONTENT_RANGE_RE = re.compile(rb"bytes ([0-9]+)-([0-9]+)/([0-9]+)")


def fuzz_one(data: bytes) -> None:
    """One size and Range header through the decision and its headers."""
    size = int.from_bytes(data[:SIZE_BYTES], "big") & ((1 << 63) - 1)
    header = data[SIZE_BYTES:].decode("latin-1") if len(data) > SIZE_BYTES else None
    decision = decide_range(header, size)
    headers = dict(decision.headers(size))
    assert len(headers) == len(decision.headers(size)), "a header named twice"
    if decision.status == 416:
        assert decision.range is None
        assert headers[b"content-range"] == b"bytes */%d" % size
        return
    part = decision.range
    assert part is not None
    assert headers[b"content-length"] == b"%d" % part.length
    if decision.status == 200:
        assert (part.start, part.end) == (0, size)
        assert b"content-range" not in headers
        return
    assert decision.status == 206, decision
    assert 0 <= part.start < part.end <= size, (part, size)
    match = _CONTENT_RANGE_RE.fullmatch(headers[b"content-range"])
    assert match is not None, headers
    first, last, total = (int(g) for g in match.groups())
    assert (first, last + 1, total) == (part.start, part.end, size)
