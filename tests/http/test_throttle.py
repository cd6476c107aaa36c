"""Tests for agent/http/throttle.py: the debt-based token bucket behind throttleLimitMB.

Pure: time is a parameter, so an hour of traffic is simulated in milliseconds.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.http.throttle import TokenBucket, TokenBucketStatistics

MiB = 1 << 20


def send_greedily(bucket: TokenBucket, sizes: list[int], start: float = 0.0) -> list[float]:
    """One sender that sends each piece as soon as it may; returns the send times."""
    now = start
    times = []
    for n in sizes:
        now += bucket.reserve(n, now)
        times.append(now)
    return times


def test_full_bucket_sends_at_once() -> None:
    bucket = TokenBucket(rate=100, burst=50)
    assert bucket.reserve(20, 0.0) == 0
    assert bucket.reserve(30, 0.0) == 0
    assert bucket.reserve(10, 0.0) == pytest.approx(0.1)  # 10 bytes at 100 B/s
    assert bucket.reserve(10, 0.0) == pytest.approx(0.2)  # behind the previous caller


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100, burst=50)
    assert bucket.reserve(50, 0.0) == 0
    # A long idle time leaves a full bucket, no more.
    assert bucket.reserve(50, 1000.0) == 0
    assert bucket.reserve(1, 1000.0) == pytest.approx(0.01)


def test_a_send_bigger_than_burst_goes_whole_and_later_callers_pay() -> None:
    bucket = TokenBucket(rate=MiB, burst=64 * 1024)
    assert bucket.reserve(4 * MiB, 0.0) == 0  # a full bucket: the chunk goes now
    # The next chunk waits for the debt (4 MiB - 64 KiB) and a full bucket again.
    assert bucket.reserve(4 * MiB, 0.0) == pytest.approx(4.0)
    # A small send waits only for its own bytes after that.
    assert bucket.reserve(1024, 0.0) == pytest.approx(4.0 + (4 * MiB - 64 * 1024 + 1024) / MiB)


def test_an_oversized_send_waits_for_a_full_bucket_not_for_itself() -> None:
    bucket = TokenBucket(rate=100, burst=10)
    assert bucket.reserve(5, 0.0) == 0
    assert bucket.reserve(1000, 0.0) == pytest.approx(0.05)  # 5 tokens short of a full bucket


def test_zero_burst_paces_every_byte() -> None:
    bucket = TokenBucket(rate=10, burst=0)
    assert send_greedily(bucket, [10, 10, 10]) == pytest.approx([0.0, 1.0, 2.0])


@pytest.mark.parametrize("rate", [0, -1, math.inf])
def test_unlimited(rate: float) -> None:
    bucket = TokenBucket(rate=rate, burst=0)
    assert bucket.unlimited
    assert all(bucket.reserve(n, 0.0) == 0 for n in (0, 1, 1 << 40))
    stats = bucket.statistics()
    assert (stats.reservations, stats.reserved_bytes, stats.delayed) == (3, 1 + (1 << 40), 0)
    assert stats.rate == math.inf


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(math.nan, 1), (1, -1), (1, math.inf), (1, math.nan)],
)
def test_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=1).reserve(-1, 0.0)


def test_a_clock_running_backwards_counts_from_the_last_call() -> None:
    bucket = TokenBucket(rate=100, burst=10)
    assert bucket.reserve(10, 5.0) == 0
    # Asked "at 4.0", but the bucket was already empty at 5.0: wait until 5.1.
    assert bucket.reserve(10, 4.0) == pytest.approx(1.1)


def test_long_run_rate_over_a_simulated_hour() -> None:
    rate = 512 * MiB / 100  # a few MiB/s keeps the loop short: ~18 GiB an hour
    bucket = TokenBucket(rate=rate, burst=256 * 1024)
    rnd = random.Random(7)
    now, sent = 0.0, 0
    while now < 3600.0:
        n = rnd.choice([rnd.randint(1, 64 * 1024), rnd.randint(1, 4 * MiB)])
        now += bucket.reserve(n, now)
        sent += n
        now += rnd.random() * 0.001 if rnd.random() < 0.1 else 0.0  # the odd pause
    assert sent / now == pytest.approx(rate, rel=0.01)


def test_long_run_rate_with_many_senders() -> None:
    # Senders interleave; each reserves at its own clock and sleeps its wait.
    rate = 10 * MiB
    bucket = TokenBucket(rate=rate, burst=MiB)
    rnd = random.Random(11)
    clocks = [0.0] * 20
    sent = 0
    while min(clocks) < 3600.0:
        i = min(range(len(clocks)), key=clocks.__getitem__)  # the earliest sender goes next
        n = rnd.randint(1, 4 * MiB)
        clocks[i] += bucket.reserve(n, clocks[i])
        sent += n
    assert sent / max(clocks) == pytest.approx(rate, rel=0.01)


@given(
    rate=st.floats(1, 1e9),
    burst_seconds=st.floats(0, 2),
    events=st.lists(
        st.tuples(st.floats(0, 2), st.floats(0, 3)),  # (gap since last arrival, size in seconds)
        min_size=1,
        max_size=60,
    ),
)
def test_no_window_exceeds_burst_plus_rate(
    rate: float, burst_seconds: float, events: list[tuple[float, float]]
) -> None:
    """Whatever the arrivals, the bytes sent in any window [a, b] are at most
    max(burst, largest send) + rate * (b - a)."""
    burst = rate * burst_seconds
    bucket = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    sends: list[tuple[float, int]] = []
    for gap, size_seconds in events:
        now += gap
        n = int(rate * size_seconds)
        sends.append((now + bucket.reserve(n, now), n))
    times = [t for t, _ in sends]
    # served in the order they reserved (up to float rounding)
    assert all(b >= a - 1e-9 * (1 + a) for a, b in zip(times, times[1:], strict=False))
    allowance = max([burst] + [n for _, n in sends])
    for i, (start, _) in enumerate(sends):
        total = 0
        for end, n in sends[i:]:
            total += n
            assert total <= allowance + rate * (end - start) + 1e-6 * (allowance + total)


@given(st.lists(st.integers(0, 100), max_size=50), st.floats(0, 1000))
def test_small_sends_respect_burst_exactly(sizes: list[int], burst: float) -> None:
    """Sends no bigger than burst that arrive at once: what goes out without waiting fits in
    the burst, as in a classic token bucket."""
    bucket = TokenBucket(rate=1, burst=max(burst, 100))
    free = [n for n in sizes if bucket.reserve(n, 0.0) == 0]
    assert sum(free) <= max(burst, 100)


def test_statistics() -> None:
    bucket = TokenBucket(rate=100, burst=50)
    bucket.reserve(50, 0.0)
    bucket.reserve(20, 0.0)
    bucket.reserve(10, 0.0)
    assert bucket.statistics() == TokenBucketStatistics(
        rate=100.0,
        burst=50.0,
        level=-30.0,
        reservations=3,
        reserved_bytes=80,
        delayed=2,
        total_wait=pytest.approx(0.2 + 0.3),  # type: ignore[arg-type]
    )
    assert not bucket.unlimited and (bucket.rate, bucket.burst) == (100.0, 50.0)
