"""Tests for agent/cache/chunks.py: chunk geometry shared by the cache, downloads and the swarm.

Pure: ChunkLayout is arithmetic.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cache.chunks import ChunkLayout

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "chunk_size", "lengths"),
    [
        (0, 4, []),
        (1, 4, [1]),
        (3, 4, [3]),
        (4, 4, [4]),  # exact multiple: no empty tail chunk
        (5, 4, [4, 1]),
        (8, 4, [4, 4]),
        (9, 4, [4, 4, 1]),
        (3, 1, [1, 1, 1]),
        (10 * MiB, 4 * MiB, [4 * MiB, 4 * MiB, 2 * MiB]),
        (8 * MiB, 4 * MiB, [4 * MiB, 4 * MiB]),
    ],
)
def test_geometry(size: int, chunk_size: int, lengths: list[int]) -> None:
    layout = ChunkLayout(size=size, chunk_size=chunk_size)
    assert layout.count == len(lengths)
    assert [layout.length(i) for i in range(layout.count)] == lengths
    assert [layout.offset(i) for i in range(layout.count)] == [
        i * chunk_size for i in range(len(lengths))
    ]


def test_large_layer() -> None:
    layout = ChunkLayout(size=20 * 1024**3 + 1, chunk_size=4 * MiB)
    assert layout.count == 5121
    assert layout.offset(5120) == 20 * 1024**3
    assert layout.length(5120) == 1
    assert layout.length(5119) == 4 * MiB


@pytest.mark.parametrize("index", [-1, 3, 4, 100])
def test_length_out_of_range(index: int) -> None:
    with pytest.raises(IndexError):
        ChunkLayout(size=9, chunk_size=4).length(index)


def test_zero_size_has_no_chunks() -> None:
    layout = ChunkLayout(size=0, chunk_size=4 * MiB)
    assert layout.count == 0
    assert list(layout.covering(0, 0)) == []
    with pytest.raises(IndexError):
        layout.length(0)


@pytest.mark.parametrize(("size", "chunk_size"), [(-1, 4), (4, 0), (4, -4), (0, 0)])
def test_bad_layout(size: int, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="bad chunk layout"):
        ChunkLayout(size=size, chunk_size=chunk_size)


@pytest.mark.parametrize(
    ("start", "end", "indexes"),
    [
        (0, 10, [0, 1, 2]),
        (0, 1, [0]),
        (0, 4, [0]),  # end is exclusive
        (0, 5, [0, 1]),
        (3, 5, [0, 1]),
        (4, 8, [1]),
        (4, 9, [1, 2]),
        (7, 8, [1]),
        (8, 9, [2]),
        (9, 10, [2]),
        (5, 5, []),  # empty
        (6, 5, []),  # reversed
        (0, 0, []),
        (10, 10, []),
    ],
)
def test_covering(start: int, end: int, indexes: list[int]) -> None:
    assert list(ChunkLayout(size=10, chunk_size=4).covering(start, end)) == indexes


# --------------------------------------------------------------------------------------------
# Properties


@st.composite
def layouts(draw: st.DrawFn) -> ChunkLayout:
    """Layouts of up to a few hundred chunks, exact multiples and ragged tails alike."""
    chunk_size = draw(st.integers(min_value=1, max_value=64 * MiB))
    full = draw(st.integers(min_value=0, max_value=300))
    tail = draw(st.one_of(st.just(0), st.integers(min_value=0, max_value=chunk_size - 1)))
    return ChunkLayout(size=full * chunk_size + tail, chunk_size=chunk_size)


@given(layouts())
def test_chunks_partition_the_layer(layout: ChunkLayout) -> None:
    position = 0
    for index in range(layout.count):
        assert layout.offset(index) == position
        length = layout.length(index)
        assert 1 <= length <= layout.chunk_size
        if index < layout.count - 1:
            assert length == layout.chunk_size
        position += length
    assert position == layout.size
    assert list(layout.covering(0, layout.size)) == list(range(layout.count))


@st.composite
def layouts_and_spans(draw: st.DrawFn) -> tuple[ChunkLayout, int, int]:
    layout = draw(layouts())
    a = draw(st.integers(min_value=0, max_value=layout.size))
    b = draw(st.integers(min_value=0, max_value=layout.size))
    return layout, a, b


@given(layouts_and_spans())
def test_covering_is_exactly_the_chunks_that_overlap(
    case: tuple[ChunkLayout, int, int],
) -> None:
    layout, start, end = case
    want = [
        i
        for i in range(layout.count)
        if start < end and layout.offset(i) < end and start < layout.offset(i) + layout.length(i)
    ]
    got = layout.covering(start, end)
    assert list(got) == want
    assert isinstance(got, range)
    if start < end:  # the chunks cover the span...
        assert layout.offset(got[0]) <= start
        assert end <= layout.offset(got[-1]) + layout.length(got[-1])
