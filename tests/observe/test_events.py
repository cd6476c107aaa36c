"""The 10-second windows and the per-layer accounting: pure arithmetic, explicit times."""

from __future__ import annotations

import pytest

from agent.observe.events import NULL_OBSERVER, LayerReport, LayerTimes, SlidingWindow, WindowRates


def test_empty_window_is_zero() -> None:
    w = SlidingWindow()
    assert w.rates(1000.0) == WindowRates(bytes_per_second=0.0, per_second=0.0, max_latency_us=0)
    assert (w.total_bytes, w.total_events) == (0, 0)


def test_rates_are_over_the_span() -> None:
    w = SlidingWindow(span=10.0, resolution=0.5)
    w.add(100.0, 4000, 150)
    w.add(101.2, 6000, 900)
    w.add(105.9, 0, 20)  # an operation that moved no bytes still counts for QPS and latency
    r = w.rates(106.0)
    assert r.bytes_per_second == pytest.approx(1000.0)  # 10000 bytes / 10 s
    assert r.per_second == pytest.approx(0.3)
    assert r.max_latency_us == 900
    assert (w.total_bytes, w.total_events) == (10000, 3)


def test_events_leave_the_window_after_the_span() -> None:
    w = SlidingWindow(span=10.0, resolution=0.5)
    w.add(100.0, 1000, 500)
    w.add(105.0, 2000, 100)
    # Bucket [100.0, 100.5) is the oldest of 20 while now is in [109.5, 110.0).
    assert w.rates(109.9).bytes_per_second == pytest.approx(300.0)
    # From 110.0 on it has left: only the event at 105 remains, with its latency.
    later = w.rates(110.0)
    assert later.bytes_per_second == pytest.approx(200.0)
    assert later.max_latency_us == 100
    assert w.rates(115.0).per_second == 0.0
    assert w.total_bytes == 3000  # the totals never forget


def test_a_ring_slot_is_reused_for_newer_buckets_only() -> None:
    w = SlidingWindow(span=2.0, resolution=1.0)
    w.add(10.0, 100)
    w.add(12.0, 200)  # same ring slot as 10.0: the old bucket is replaced
    assert w.rates(12.5).bytes_per_second == pytest.approx(100.0)
    w.add(10.2, 50)  # older than the slot holds now: outside the window, only totals
    assert w.rates(12.5).bytes_per_second == pytest.approx(100.0)
    assert w.total_bytes == 350


def test_negative_sizes_count_as_operations_without_bytes() -> None:
    w = SlidingWindow()
    w.add(1.0, -5, 10)
    assert w.rates(1.0).per_second == pytest.approx(0.1)
    assert w.total_bytes == 0


@pytest.mark.parametrize(("span", "resolution"), [(0, 1), (10, 0), (1, 2)])
def test_bad_window_shapes_are_refused(span: float, resolution: float) -> None:
    with pytest.raises(ValueError):
        SlidingWindow(span=span, resolution=resolution)


def test_layer_times_merge_and_line() -> None:
    download = LayerTimes()
    download.add_time("slot", 0.25)
    download.add_time("transfer", 1.5)
    download.add_time("verify", 0.0625)
    download.add_bytes("origin", 700)
    download.add_bytes("peer", 300)
    pull = LayerTimes()
    pull.add_time("auth", 0.01)
    pull.add_time("disk", -1.0)  # clamped: a clock step never makes time negative
    pull.merge(download)
    report = LayerReport(
        digest="sha256:" + "ab" * 32,
        upstream="registry.example.com",
        repo="team/app",
        size=1000,
        seconds=1.8,
        result="ok",
        times=pull,
    )
    assert report.line() == (
        "layer pull digest=sha256:" + "ab" * 32 + " upstream=registry.example.com "
        "repo=team/app bytes=1000 seconds=1.800 result=ok from_cache=0 from_peer=300 "
        "from_root=0 from_origin=700 slot_s=0.250 auth_s=0.010 transfer_s=1.500 "
        "verify_s=0.062 disk_s=0.000"
    )


def test_the_null_observer_accepts_every_event() -> None:
    NULL_OBSERVER.disk("fileread", "/x", 0, 1, 0.1)
    NULL_OBSERVER.served("http:pread", "/x", 0, 1, 0.1)
    NULL_OBSERVER.fetched("peer", "n:1", "", 0, -1, 0.1)
    NULL_OBSERVER.rejected("layer")
    NULL_OBSERVER.request("proxy", 200, 1, 0.1)
