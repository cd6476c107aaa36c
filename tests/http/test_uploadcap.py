"""The upload cap on trio's clock (agent/http/uploadcap.py): sends wait as the bucket says.

trio's autojump clock makes the waits exact: time moves only when every task sleeps.
"""

from __future__ import annotations

import math

import trio

from agent.http.throttle import TokenBucket
from agent.http.uploadcap import UploadCap

MiB = 1 << 20


async def test_a_send_within_the_burst_does_not_wait(autojump_clock: trio.abc.Clock) -> None:
    cap = UploadCap(TokenBucket(MiB, burst=MiB))
    started = trio.current_time()
    await cap(MiB)
    assert trio.current_time() == started


async def test_sends_beyond_the_rate_wait_for_it(autojump_clock: trio.abc.Clock) -> None:
    cap = UploadCap(TokenBucket(MiB, burst=MiB))
    started = trio.current_time()
    for _ in range(5):  # 5 MiB at 1 MiB/s with 1 MiB of burst: 4 s
        await cap(MiB)
    assert math.isclose(trio.current_time() - started, 4.0)
    stats = cap.statistics()
    assert (stats.reservations, stats.reserved_bytes, stats.delayed) == (5, 5 * MiB, 4)


async def test_concurrent_senders_share_one_cap(autojump_clock: trio.abc.Clock) -> None:
    cap = UploadCap(TokenBucket(MiB, burst=MiB))
    done: list[float] = []

    async def send() -> None:
        await cap(MiB)
        done.append(trio.current_time())

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(send)
    assert [round(t - started, 6) for t in sorted(done)] == [0.0, 1.0, 2.0]


async def test_unlimited_never_waits(autojump_clock: trio.abc.Clock) -> None:
    cap = UploadCap(TokenBucket(0, burst=0))
    started = trio.current_time()
    for _ in range(100):
        await cap(64 * MiB)
    assert trio.current_time() == started
