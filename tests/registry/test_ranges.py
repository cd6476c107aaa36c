"""Tests for agent/registry/ranges.py: single byte ranges, 206/416 decisions and their headers.

Pure: decide_range takes a header string and a size.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.registry.ranges import ByteRange, RangeDecision, decide_range

SIZE = 100


def whole(size: int) -> RangeDecision:
    return RangeDecision(status=200, range=ByteRange(start=0, end=size))


def part(start: int, end: int) -> RangeDecision:
    return RangeDecision(status=206, range=ByteRange(start=start, end=end))


UNSATISFIABLE = RangeDecision(status=416, range=None)


@pytest.mark.parametrize(
    ("header", "decision"),
    [
        (None, whole(SIZE)),
        # first-last, inclusive
        ("bytes=0-", part(0, SIZE)),
        ("bytes=10-19", part(10, 20)),
        ("bytes=0-0", part(0, 1)),
        ("bytes=99-99", part(99, 100)),
        ("bytes=99-", part(99, 100)),
        ("bytes=0-99", part(0, 100)),
        # an end beyond the blob is clipped
        ("bytes=10-100", part(10, 100)),
        ("bytes=10-1000000000000000000000", part(10, 100)),
        # suffix ranges: the last N bytes
        ("bytes=-5", part(95, 100)),
        ("bytes=-1", part(99, 100)),
        ("bytes=-100", part(0, 100)),
        ("bytes=-101", part(0, 100)),  # bigger than the blob: all of it
        ("bytes=-1000000000000000000000", part(0, 100)),
        # whitespace around the parts is tolerated
        (" bytes = 10 - 19 ", part(10, 20)),
        # unsatisfiable
        ("bytes=100-", UNSATISFIABLE),
        ("bytes=100-200", UNSATISFIABLE),
        ("bytes=1000-", UNSATISFIABLE),
        ("bytes=-0", UNSATISFIABLE),
        # ignored: the whole blob with 200
        ("bytes=19-10", whole(SIZE)),  # last < first
        ("bytes=0-1,5-6", whole(SIZE)),  # multi-range
        ("bytes=0-1, 5-6", whole(SIZE)),
        ("bytes=-", whole(SIZE)),
        ("bytes=", whole(SIZE)),
        ("bytes=a-b", whole(SIZE)),
        ("bytes=1.5-2", whole(SIZE)),
        ("bytes=--5", whole(SIZE)),
        ("bytes=-5-", whole(SIZE)),
        ("bytes=+1-2", whole(SIZE)),
        ("items=0-5", whole(SIZE)),  # another unit
        ("0-5", whole(SIZE)),
        ("", whole(SIZE)),
        ("garbage", whole(SIZE)),
    ],
)
def test_decide_range(header: str | None, decision: RangeDecision) -> None:
    assert decide_range(header, SIZE) == decision


@pytest.mark.parametrize(
    ("header", "decision"),
    [
        (None, whole(0)),
        ("garbage", whole(0)),
        ("bytes=0-", UNSATISFIABLE),
        ("bytes=0-0", UNSATISFIABLE),
        ("bytes=0-10", UNSATISFIABLE),
        ("bytes=-0", UNSATISFIABLE),
    ],
)
def test_zero_size_blob(header: str | None, decision: RangeDecision) -> None:
    assert decide_range(header, 0) == decision


@pytest.mark.parametrize("header", ["bytes=-1", "bytes=-5"])
def test_zero_size_blob_suffix_range_is_416(header: str) -> None:
    # Regression: this was a 206 of the empty range [0,0) with Content-Range "bytes 0--1/0".
    decision = decide_range(header, 0)
    assert decision == UNSATISFIABLE
    assert decision.headers(0) == [(b"content-range", b"bytes */0"), (b"content-length", b"0")]


@pytest.mark.parametrize(
    ("header", "size", "status", "headers"),
    [
        (None, 100, 200, [(b"content-length", b"100")]),
        (None, 0, 200, [(b"content-length", b"0")]),
        (
            "bytes=10-19",
            100,
            206,
            [(b"content-length", b"10"), (b"content-range", b"bytes 10-19/100")],
        ),
        (
            "bytes=0-",
            100,
            206,
            [(b"content-length", b"100"), (b"content-range", b"bytes 0-99/100")],
        ),
        ("bytes=-5", 100, 206, [(b"content-length", b"5"), (b"content-range", b"bytes 95-99/100")]),
        ("bytes=0-0", 1, 206, [(b"content-length", b"1"), (b"content-range", b"bytes 0-0/1")]),
        (
            "bytes=4294967296-",
            10737418240,
            206,
            [
                (b"content-length", b"6442450944"),
                (b"content-range", b"bytes 4294967296-10737418239/10737418240"),
            ],
        ),
        ("bytes=100-", 100, 416, [(b"content-range", b"bytes */100"), (b"content-length", b"0")]),
        ("bytes=0-", 0, 416, [(b"content-range", b"bytes */0"), (b"content-length", b"0")]),
    ],
)
def test_headers(
    header: str | None, size: int, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    decision = decide_range(header, size)
    assert decision.status == status
    assert decision.headers(size) == headers


# --------------------------------------------------------------------------------------------
# Properties

sizes = st.integers(min_value=1, max_value=2**44)


@st.composite
def sized_range_headers(draw: st.DrawFn) -> tuple[int, str]:
    """A size and a syntactically valid single-range header (satisfiable or not)."""
    size = draw(sizes)
    positions = st.integers(min_value=0, max_value=size * 2)
    form = draw(st.sampled_from(["first-last", "first-", "suffix"]))
    if form == "suffix":
        return size, f"bytes=-{draw(st.integers(min_value=1, max_value=size * 2))}"
    first = draw(positions)
    if form == "first-":
        return size, f"bytes={first}-"
    last = draw(st.integers(min_value=first, max_value=size * 2))
    return size, f"bytes={first}-{last}"


@given(sized_range_headers())
def test_206_stays_inside_the_blob(case: tuple[int, str]) -> None:
    size, header = case
    decision = decide_range(header, size)
    if decision.status == 416:
        assert decision.range is None
        assert decision.headers(size) == [
            (b"content-range", f"bytes */{size}".encode()),
            (b"content-length", b"0"),
        ]
        return
    assert decision.status == 206
    r = decision.range
    assert r is not None
    assert 0 <= r.start < r.end <= size
    headers = dict(decision.headers(size))
    assert int(headers[b"content-length"]) == r.length == r.end - r.start
    assert headers[b"content-range"] == f"bytes {r.start}-{r.end - 1}/{size}".encode()


@given(sized_range_headers())
def test_matches_rfc9110_single_range(case: tuple[int, str]) -> None:
    """An independent reading of RFC 9110 §14.1.2 for one range on a non-empty blob."""
    size, header = case
    spec = header.removeprefix("bytes=")
    first_text, _, last_text = spec.partition("-")
    if first_text == "":
        want = part(max(0, size - int(last_text)), size)
    elif int(first_text) >= size:
        want = UNSATISFIABLE
    elif last_text == "":
        want = part(int(first_text), size)
    else:
        want = part(int(first_text), min(int(last_text), size - 1) + 1)
    assert decide_range(header, size) == want


@given(
    size=st.one_of(st.just(0), sizes),
    header=st.one_of(st.text(max_size=30), st.from_regex(r"\Abytes=[0-9]{0,3}-[0-9]{0,3}\Z")),
)
def test_any_header_gives_a_sane_decision(size: int, header: str) -> None:
    decision = decide_range(header, size)
    assert decision.status in (200, 206, 416)
    if decision.status == 200:
        assert decision.range == ByteRange(start=0, end=size)
    elif decision.status == 206:
        assert decision.range is not None
        assert 0 <= decision.range.start < decision.range.end <= size


@pytest.mark.parametrize(
    ("header", "decision"),
    [
        ("bytes=" + "9" * 5000 + "-", UNSATISFIABLE),  # past any blob
        ("bytes=10-" + "9" * 5000, part(10, SIZE)),  # an end past the blob: to its end
        ("bytes=-" + "9" * 5000, part(0, SIZE)),  # a suffix longer than the blob: all of it
        ("bytes=" + "0" * 5000 + "7-9", part(7, 10)),  # leading zeros are just zeros
        ("bytes=" + "9" * 5000 + "-1", whole(SIZE)),  # last before first: ignored
    ],
)
def test_positions_longer_than_any_blob_are_decided_not_parsed_whole(
    header: str, decision: RangeDecision
) -> None:
    """Python's int() refuses more than 4300 digits (ValueError: a 500 with a traceback)."""
    assert decide_range(header, SIZE) == decision
