"""The node's upload cap (``throttleLimitMB``) on trio's clock: the async side of
`agent.http.throttle.TokenBucket`.

The bucket is pure arithmetic (time is a parameter, so it is tested without a clock); this
adapter reads trio's clock, reserves the bytes and sleeps as long as the bucket says. One
`UploadCap` is shared by every server of a node (`ServerSettings.throttle`), which awaits it
with each body piece's size before sending it, so the cap holds for the node as a whole.
Waiters wake in the order they reserved: each reservation's wait already includes everyone's
before it.
"""

from __future__ import annotations

import trio

from agent.http.throttle import TokenBucket, TokenBucketStatistics


class UploadCap:
    """``await cap(n)`` before sending `n` bytes; returns at once while under the cap."""

    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket

    async def __call__(self, n: int) -> None:
        delay = self._bucket.reserve(n, trio.current_time())
        if delay > 0:
            await trio.sleep(delay)

    def statistics(self) -> TokenBucketStatistics:
        return self._bucket.statistics()
