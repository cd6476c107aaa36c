"""Tests for agent/cache/chunks.py: chunk geometry shared by the cache, downloads and the swarm.

Pure: ChunkLayout is arithmetic. Chunk sizes under 2 MiB, or no multiple of 8 KiB, cut a
layer uniformly (a head chunk is page-aligned and at least 1 MiB): the first cases.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cache.chunks import HEAD_CHUNKS, ChunkLayout, head_chunk_size

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
        (10 * MiB + 1, 4 * MiB + 1, [4 * MiB + 1, 4 * MiB + 1, 2 * MiB - 1]),
    ],
)
def test_geometry(size: int, chunk_size: int, lengths: list[int]) -> None:
    layout = ChunkLayout(size=size, chunk_size=chunk_size)
    assert layout.count == len(lengths)
    assert [layout.length(i) for i in range(layout.count)] == lengths
    assert [layout.offset(i) for i in range(layout.count)] == [
        i * chunk_size for i in range(len(lengths))
    ]


@pytest.mark.parametrize(
    ("size", "lengths"),
    [
        # A layer past two chunks: its first 8 chunks are half a chunk, the rest whole.
        (64 * MiB, [2 * MiB] * 8 + [4 * MiB] * 12),
        (16 * MiB, [2 * MiB] * 8),
        (15 * MiB, [2 * MiB] * 7 + [1 * MiB]),
        (17 * MiB, [2 * MiB] * 8 + [1 * MiB]),
        (9 * MiB, [2 * MiB] * 4 + [1 * MiB]),
        # Up to two chunks: quarter chunks.
        (8 * MiB, [1 * MiB] * 8),
        (5 * MiB, [1 * MiB] * 5),
        (1 * MiB + 7, [1 * MiB, 7]),
        (4096, [4096]),
        (1, [1]),
        (0, []),
    ],
)
def test_a_layers_head_is_in_small_chunks(size: int, lengths: list[int]) -> None:
    layout = ChunkLayout(size=size, chunk_size=4 * MiB)
    assert layout.lengths() == lengths
    assert [layout.offset(i) for i in range(layout.count)] == [
        sum(lengths[:i]) for i in range(len(lengths))
    ]
    assert layout.head_count == min(HEAD_CHUNKS, len(lengths))
    uniform = ChunkLayout(size=size, chunk_size=4 * MiB, head_chunk=4 * MiB)
    assert uniform.count == -(-size // (4 * MiB))


@pytest.mark.parametrize(
    ("size", "chunk_size", "head"),
    [
        (64 * MiB, 4 * MiB, 2 * MiB),
        (8 * MiB, 4 * MiB, 1 * MiB),
        (100, 4 * MiB, MiB),
        (100, 2 * MiB, MiB),  # a quarter would be under HEAD_MIN: a half
        (5 * MiB, 2 * MiB, MiB),
        (100, 1 * MiB, MiB),  # neither fits: no head
        (100, 64 * 1024, 64 * 1024),
        (100_000, 4 * MiB + 4096, 4 * MiB + 4096),  # half of 1025 pages is no whole page
        (100_000, 4 * MiB + 1, 4 * MiB + 1),
    ],
)
def test_head_chunks_stay_page_aligned(size: int, chunk_size: int, head: int) -> None:
    assert head_chunk_size(size, chunk_size) == head


def test_large_layer() -> None:
    layout = ChunkLayout(size=20 * 1024**3 + 1, chunk_size=4 * MiB)
    assert layout.count == 5121 + 4  # 8 half chunks for the first 4
    assert layout.offset(5124) == 20 * 1024**3
    assert layout.length(5124) == 1
    assert layout.length(5123) == 4 * MiB
    assert layout.index_of(20 * 1024**3) == 5124
    assert layout.part(0) == 0.5


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


@pytest.mark.parametrize(
    ("size", "chunk_size", "head_chunk"),
    [(-1, 4, 0), (4, 0, 0), (4, -4, 0), (0, 0, 0), (4, 4, 5), (4, 4, -1)],
)
def test_bad_layout(size: int, chunk_size: int, head_chunk: int) -> None:
    with pytest.raises(ValueError, match="bad chunk layout"):
        ChunkLayout(size=size, chunk_size=chunk_size, head_chunk=head_chunk)


def test_a_given_head_chunk_cuts_the_head() -> None:
    layout = ChunkLayout(size=20, chunk_size=4, head_chunk=1)
    assert layout.lengths() == [1] * 8 + [4, 4, 4]
    assert [layout.scale(i) for i in (0, 7, 8, 10)] == [0.25, 0.25, 1.0, 1.0]


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
    """Layouts of up to a few hundred chunks, exact multiples and ragged tails alike, with
    heads (page-multiple chunk sizes) and without."""
    chunk_size = draw(
        st.one_of(
            st.integers(min_value=1, max_value=64 * MiB),
            st.integers(min_value=1, max_value=1024).map(lambda pages: pages * 4096),
        )
    )
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
        whole = layout.head_chunk if index < layout.head_count else layout.chunk_size
        if index < layout.count - 1:
            assert length == whole
        assert layout.index_of(position) == index
        assert layout.index_of(position + length - 1) == index
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
