"""bench/transfers.py: the transfer trace the agents log at debug level, read back and summed
(the line is `agent.swarm.download`'s; a change there that the reader misses fails here)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import transfers  # noqa: E402

CHUNK = 4 << 20
FIRST = "layer %s: chunk %d (%d bytes) from %s began at %.3f: head after %.0f ms, "
REST = "1 MiB in after %.0f ms, `finishing` after %.0f ms, all in after %.0f ms"


def line(
    chunk: int,
    source: str,
    began: float,
    took_ms: int,
    said_ms: int = -1,
    head_ms: int = 20,
    size: int = CHUNK,
) -> str:
    """The debug line `SwarmDownload._transfer` writes, with its format string."""
    record = logging.LogRecord(
        "agent.swarm.download",
        logging.DEBUG,
        __file__,
        0,
        FIRST + REST,
        ("sha256:" + "ab" * 32, chunk, size, source, began, head_ms, 100, said_ms, took_ms),
        None,
    )
    return "2026-12-02 08:25:24,628 DEBUG agent.swarm.download: " + record.getMessage()


def test_the_download_module_writes_the_line_the_reader_parses() -> None:
    source = Path(__file__).resolve().parents[1] / "agent" / "swarm" / "download.py"
    text = source.read_text()
    assert f'"{FIRST}"' in text and f'"{REST}"' in text


def test_shared_links_gaps_and_leads_are_summed() -> None:
    a = transfers.parse(
        "agent-3",
        chunk=CHUNK,
        lines=[
            line(0, "10.0.0.2:1", 100.0, 1000, said_ms=990, head_ms=80),  # the root's, alone
            line(1, "10.0.0.5:1", 100.5, 1000, said_ms=980),  # overlaps it: 0.5 s shared
            line(2, "10.0.0.5:1", 102.0, 500),  # after an idle gap of 0.5 s
            "an unrelated line",
        ],
    )
    assert [t.chunk for t in a] == [0, 1, 2] and a[1].ended == pytest.approx(101.5)
    b = transfers.parse("agent-4", [line(0, "10.0.0.5:1", 101.0, 1000)], CHUNK)  # .5 uploads two
    out = transfers.report(a + b, chunk_seconds=0.5, roots={"10.0.0.2"})
    assert out[0] == "4 transfers; a chunk takes 500 ms at the link's rate"
    tail = "(2.00 x the link's time for its bytes)"
    assert out[1] == "  from a root: 1, median 1000 ms, the head after 80 " + tail
    assert out[2] == "  from a peer: 3, median 1000 ms, the head after 20 " + tail
    # .5 uploads 100.5-101.5 and 101.0-102.0, then 102.0-102.5: 2 s busy, 0.5 s of it shared;
    # with the root's 1 s: 3 s. agent-3 downloads 100.0-101.5 (0.5 s shared), 102.0-102.5.
    assert out[3].startswith("sources uploading 3.0 s in all, two or more at once 17%")
    assert out[3].endswith("receivers downloading 3.0 s, two or more at once 17%")
    # 4 chunks of 0.5 s at the link's rate in 3 s of downloading (agent-3 2 s, agent-4 1 s).
    assert out[4].startswith("while a transfer was in, the receivers' links moved 67% of their")
    # Lanes, from each transfer's head (20 ms in, the root's 80): agent-3's spans 100.08 to
    # 102.5 with 101.5 to 102.02 empty; agent-4's 0.98 s, none: 0.52 of 3.40 s.
    assert out[5].startswith("the receivers' links by fifth of each pull (their rate used): ")
    assert out[6].startswith("a layer's download stood empty between its transfers 15% of its")
    assert "(0.5 of 3.4 s;" in out[6]
    assert out[7] == "idle gaps between a receiver's transfers: 1, 0.5 s in all, median 500 ms"
    assert out[8].startswith("`finishing` said 2 times, before the last byte by a median 15 ms")


def test_each_fifth_of_a_pull_counts_the_link_rate_its_transfers_used() -> None:
    # A chunk takes 0.4 s at the link's rate. agent-x's one chunk took 1 s from its head (40 %
    # of its link all along, its pull 0-1 s); agent-y's pull (0-2 s, fifths of 0.4 s) moved a
    # chunk at the full rate in its first fifth and one in its last, nothing between.
    x = transfers.parse("agent-x", [line(0, "10.0.0.5:1", 100.0, 1000, head_ms=0)])
    y = transfers.parse(
        "agent-y",
        [
            line(1, "10.0.0.5:1", 100.0, 400, head_ms=0),
            line(2, "10.0.0.6:1", 101.6, 400, head_ms=0),
        ],
    )
    assert transfers.phase_line(x + y, chunk_seconds=0.4).endswith(": 70% 20% 20% 20% 70%")


def test_logs_without_the_trace_say_how_to_get_it() -> None:
    assert "--verbose" in transfers.report([], 0.3, set())[0]


def test_a_head_chunk_counts_its_own_bytes() -> None:
    """A layer's head chunks are smaller (agent.cache.chunks): the logged size makes a half
    chunk that took its link time a full use of the link, not half of it (nor twice)."""
    half = transfers.parse("agent-1", [line(0, "10.0.0.5:1", 100.0, 250, size=CHUNK // 2)], CHUNK)
    assert half[0].part == 0.5
    out = transfers.report(half, chunk_seconds=0.5, roots=set())
    assert "(1.00 x the link's time for its bytes)" in out[1]
    assert out[3].startswith("while a transfer was in, the receivers' links moved 100% of")
    old = "layer sha256:ab: chunk 3 from 10.0.0.5:1 began at 100.000: head after 20 ms, " + REST
    assert transfers.parse("agent-1", [old % (100, -1, 500)], CHUNK)[0].part == 1.0  # older
