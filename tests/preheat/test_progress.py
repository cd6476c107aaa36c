"""What `pollen preheat` prints (agent/preheat/progress.py): states, the terminal frame, the
plain lines, the summary and the JSON document."""

from __future__ import annotations

import json

from agent.preheat.progress import (
    BlobState,
    ImageReport,
    PlainLog,
    bar,
    format_bytes,
    frame,
    json_document,
    short,
    summary,
)

MiB = 1 << 20


def blob(n: int, size: int = 8 * MiB, kind: str = "layer") -> BlobState:
    return BlobState(digest=f"sha256:{n:064x}", size=size, kind=kind, images=["reg/app:v1"])


def test_a_blob_moves_through_its_states() -> None:
    fetched = blob(1)
    fetched.asking("r1:65002", now=10.0)
    assert (fetched.state, fetched.root, fetched.started) == ("asking", "r1:65002", 10.0)
    fetched.answered(size=8 * MiB, stored=MiB, complete=False, cached=False, now=11.0)
    assert (fetched.state, fetched.stored) == ("fetching", MiB)
    fetched.asking("r1:65002", now=11.0)
    assert fetched.state == "fetching"  # asking again changes nothing shown
    fetched.answered(size=8 * MiB, stored=8 * MiB, complete=True, cached=False, now=13.5)
    assert (fetched.state, fetched.finished, fetched.seconds(99.0)) == ("fetched", True, 3.5)

    cached = blob(2)
    cached.asking("r2:65002", now=10.0)
    cached.answered(size=8 * MiB, stored=8 * MiB, complete=True, cached=True, now=10.1)
    assert cached.state == "cached"

    late = blob(3)  # a root that fetched it while we watched says "cached" at the end
    late.asking("r1:65002", now=1.0)
    late.answered(size=None, stored=0, complete=False, cached=False, now=2.0)
    late.answered(size=8 * MiB, stored=8 * MiB, complete=True, cached=True, now=3.0)
    assert late.state == "fetched"

    failed = blob(4)
    failed.fail("no root could take it", now=5.0)
    assert (failed.state, failed.error, failed.finished) == (
        "failed",
        "no root could take it",
        True,
    )


def test_sizes_bars_and_digests_are_short() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * MiB, 3 << 30)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]
    assert bar(0, 100, 10) == "[..........]"
    assert bar(55, 100, 10) == "[#####.....]"
    assert bar(100, 100, 10) == "[##########]"
    assert bar(0, 0, 4) == "[####]"  # an empty blob is whole
    assert short("sha256:" + "0123456789abcdef" * 4) == "sha256:0123456789ab"


def test_the_terminal_frame_has_a_bar_per_blob() -> None:
    fetching, done, failed = blob(1), blob(2, 564, "config"), blob(3)
    fetching.asking("r1:65002", 0.0)
    fetching.answered(size=8 * MiB, stored=2 * MiB, complete=False, cached=False, now=1.0)
    done.asking("r2:65002", 0.0)
    done.answered(size=564, stored=564, complete=True, cached=True, now=0.5)
    failed.fail("r1:65002 answered 404: upstream answered 404", 1.0)
    lines = frame([fetching, done, failed, blob(4)], now=2.0)
    assert lines[0] == (
        f"{short(fetching.digest)} layer  [#####...............]  25%    "
        "2.0 MiB / 8.0 MiB  r1:65002"
    )
    assert (
        lines[1]
        == f"{short(done.digest)} config [####################] cached  564 B in 0.5 s  r2:65002"
    )
    assert lines[2].endswith("failed: r1:65002 answered 404: upstream answered 404")
    assert lines[3].endswith("waiting 8.0 MiB")


def test_plain_lines_tell_each_start_quarter_and_end_once() -> None:
    log = PlainLog()
    b = blob(1)
    assert log.lines([b], 0.0) == []  # waiting: nothing to say
    b.asking("r1:65002", 0.0)
    assert log.lines([b], 0.0) == [f"{short(b.digest)} layer 8.0 MiB: asking r1:65002"]
    assert log.lines([b], 0.1) == []
    b.answered(size=8 * MiB, stored=3 * MiB, complete=False, cached=False, now=1.0)
    assert log.lines([b], 1.0) == [f"{short(b.digest)} layer 8.0 MiB: r1:65002 has 25%"]
    b.answered(size=8 * MiB, stored=3 * MiB + 5, complete=False, cached=False, now=2.0)
    assert log.lines([b], 2.0) == []
    b.answered(size=8 * MiB, stored=MiB, complete=False, cached=False, now=3.0)
    assert log.lines([b], 3.0) == []  # a restarted download goes quiet until it is back
    b.answered(size=8 * MiB, stored=7 * MiB, complete=False, cached=False, now=4.0)
    assert log.lines([b], 4.0) == [f"{short(b.digest)} layer 8.0 MiB: r1:65002 has 75%"]
    b.answered(size=8 * MiB, stored=8 * MiB, complete=True, cached=False, now=5.0)
    assert log.lines([b], 5.0) == [f"{short(b.digest)} layer 8.0 MiB: fetched in 5.0 s at r1:65002"]
    assert log.lines([b], 6.0) == []


def test_the_summary_says_what_happened() -> None:
    fetched, cached = blob(1), blob(2, 512, "config")
    for b, was_cached in ((fetched, False), (cached, True)):
        b.asking("r", 0.0)
        b.answered(size=b.size, stored=b.size, complete=True, cached=was_cached, now=1.0)
    assert summary([fetched, cached], 1, 2.25) == (
        "preheated 2 blobs (8.0 MiB) of 1 image(s) in 2.2 s: 1 fetched (8.0 MiB), 1 cached already"
    )
    assert summary([cached], 1, 0.04) == (
        "preheated 1 blobs (512 B) of 1 image(s): all cached already, in 0.0 s"
    )
    failed = blob(3)
    failed.fail("x", 1.0)
    assert summary([fetched, failed], 2, 3.0).startswith("preheat failed: 1 of 2 blobs")


def test_the_json_document_has_every_blob_and_the_outcome() -> None:
    done = blob(1)
    done.asking("r1:65002", 1.0)
    done.answered(size=8 * MiB, stored=8 * MiB, complete=True, cached=False, now=2.5)
    report = ImageReport("reg/app:v1", "reg", "app", "v1", (("linux/amd64", "sha256:" + "1" * 64),))
    doc = json_document([report], [done], 3.0, now=9.0, warnings=["w"])
    assert json.loads(json.dumps(doc)) == doc
    assert doc["ok"] is True and doc["error"] is None and doc["warnings"] == ["w"]
    assert doc["images"][0]["manifests"] == [
        {"platform": "linux/amd64", "digest": "sha256:" + "1" * 64}
    ]
    assert doc["blobs"][0] == {
        "digest": done.digest,
        "kind": "layer",
        "size": 8 * MiB,
        "images": ["reg/app:v1"],
        "root": "r1:65002",
        "state": "fetched",
        "seconds": 1.5,
        "error": None,
    }
    assert (doc["fetched"], doc["cached"], doc["failed"], doc["bytes"]) == (1, 0, 0, 8 * MiB)
    failed = json_document([], [], 0.0, now=0.0, error="image x not found")
    assert failed["ok"] is False and failed["error"] == "image x not found"
    waiting = json_document([report], [blob(2)], 1.0, now=1.0)
    assert waiting["ok"] is False and waiting["blobs"][0]["seconds"] is None
