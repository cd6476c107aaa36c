"""`HotChunks`, the chunks a download keeps in memory: which stay, which go."""

from __future__ import annotations

from agent.fetch.hotchunks import KEEP, HotChunks


def held(hot: HotChunks, upto: int = 16) -> list[int]:
    return [i for i in range(upto) if i in hot]


def test_of_the_written_chunks_only_the_last_to_arrive_stay_whatever_their_order() -> None:
    hot = HotChunks()
    for index in (9, 3, 7, 1):  # the swarm's order: any
        hot.add(index, bytearray(b"x"))
    hot.written(unwritten={1})
    assert KEEP == 2 and held(hot) == [1, 3, 7]  # 1 unwritten; 3, 7 the last written to come
    hot.written(unwritten=set())
    assert held(hot) == [1, 7]
    hot.add(0, bytearray(b"y"))
    hot.written(unwritten=set())
    assert held(hot) == [0, 1]


def test_once_ended_the_chunks_below_the_first_a_reader_needs_go() -> None:
    hot = HotChunks()
    for index in (4, 5):
        hot.add(index, bytearray(b"x"))
    hot.ended(first_needed=5)
    assert held(hot) == [5] and hot.get(5) == b"x" and hot.get(4) is None
    hot.drop(5)
    assert len(hot) == 0
    hot.add(2, bytearray(b"x"))
    hot.ended(first_needed=0)
    assert held(hot) == [2]
    hot.ended(first_needed=None)  # failed: its readers fail too, nothing stays
    assert len(hot) == 0
