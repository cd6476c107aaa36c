"""The upstream client's body pace: a body must bring enough bytes per read timeout."""

from __future__ import annotations

from agent.http.client import BodyPace


def test_a_body_trickling_within_every_read_timeout_is_refused_after_one_window() -> None:
    pace = BodyPace(window=30.0, floor=65536)
    now = 0.0
    complaint = None
    for _ in range(10):  # a byte every 29 s: every read well within the 30 s read timeout
        complaint = pace.check(1, now)
        if complaint:
            break
        now += 29.0
    assert complaint is not None and "sent 3 bytes in 58 s" in complaint


def test_a_body_at_any_working_rate_passes_window_after_window() -> None:
    pace = BodyPace(window=30.0, floor=65536)
    for second in range(300):  # 4 KiB/s, twice the floor's rate, for five minutes
        assert pace.check(4096, float(second)) is None


def test_each_window_is_judged_on_its_own_bytes() -> None:
    pace = BodyPace(window=10.0, floor=1000)
    assert pace.check(5000, 0.0) is None  # a burst at first...
    assert pace.check(0, 10.0) is None  # ...carries its window
    assert pace.check(10, 15.0) is None
    assert pace.check(10, 20.0) is not None  # ...but not the next one
