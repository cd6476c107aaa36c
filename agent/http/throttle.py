"""A token bucket for ``throttleLimitMB``, without a clock: time is a parameter.

The bucket fills at ``rate`` bytes per second up to ``burst`` bytes.  :meth:`TokenBucket.reserve`
takes ``n`` bytes *now* and says how long the caller must wait before sending them; the async
layer (`agent.http.uploadcap`) sleeps that long, then sends.  Callers that reserve one after
another are served in the order they reserved (each one's wait includes everyone's before it);
waking them in that order is the async layer's job.

Why debt-based
--------------
Chunks are MiB-sized (cache.chunkSize, 4 MiB by default) and a response may be written in one
piece, while a sensible burst is much smaller (a burst of a second's worth of a 512 MiB/s
limit would let every idle node blast half a gigabyte at once).  A classic bucket, where a
sender waits until ``n`` tokens are present, would block a send bigger than ``burst``
forever.  Here the level may go negative: a send waits only until the bucket holds
``min(n, burst)`` tokens, then takes all ``n``, and the debt is paid by whoever comes next.
So:

* sends up to ``burst`` behave exactly as in a classic bucket: in any interval of ``d``
  seconds at most ``burst + rate * d`` bytes go out;
* a larger send waits for a full bucket and goes out whole; the bound becomes
  ``max(burst, n) + rate * d``;
* over a long run the rate is exactly ``rate``, whatever the sizes.

A reservation whose caller is cancelled before sending stays spent: the bucket under-uses the
link by that much, once, which is the safe direction for a limit.

A rate of 0, a negative rate or infinity means unlimited: every reservation returns 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TokenBucketStatistics:
    rate: float  # bytes per second; inf when unlimited
    burst: float  # bytes
    level: float  # tokens at the last reservation, after it; negative = debt being paid off
    reservations: int  # calls to reserve()
    reserved_bytes: int  # bytes reserved in total
    delayed: int  # reservations told to wait
    total_wait: float  # seconds of waiting handed out in total


class TokenBucket:
    """``reserve(n, now) -> seconds to wait``; see the module docstring for the rules."""

    def __init__(self, rate: float, burst: float) -> None:
        if math.isnan(rate):
            raise ValueError("rate must be a number, got NaN")
        if not (math.isfinite(burst) and burst >= 0):
            raise ValueError(f"burst must be a finite number of bytes >= 0, got {burst!r}")
        self._unlimited = rate <= 0 or math.isinf(rate)
        self._rate = math.inf if self._unlimited else float(rate)
        self._burst = float(burst)
        self._level = float(burst)
        self._stamp: float | None = None  # time of _level; None until the first reservation
        self._reservations = 0
        self._reserved_bytes = 0
        self._delayed = 0
        self._total_wait = 0.0

    @property
    def unlimited(self) -> bool:
        return self._unlimited

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` bytes at time ``now`` (seconds, any monotonic origin); return how many
        seconds the caller must wait before sending them.  A ``now`` earlier than a previous
        call's counts as that call's time (the clock never runs backwards here)."""
        if n < 0:
            raise ValueError(f"cannot reserve a negative number of bytes: {n}")
        self._reservations += 1
        self._reserved_bytes += n
        if self._unlimited:
            return 0.0
        if self._stamp is None:
            self._stamp = now
        elif now > self._stamp:
            self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
            self._stamp = now
        need = min(float(n), self._burst)
        wait = 0.0
        if self._level < need:  # the tokens are there at _stamp + (need - level) / rate
            wait = self._stamp - min(now, self._stamp) + (need - self._level) / self._rate
        self._level -= n
        if wait > 0:
            self._delayed += 1
            self._total_wait += wait
        return wait

    def statistics(self) -> TokenBucketStatistics:
        return TokenBucketStatistics(
            rate=self._rate,
            burst=self._burst,
            level=self._burst if self._unlimited else self._level,
            reservations=self._reservations,
            reserved_bytes=self._reserved_bytes,
            delayed=self._delayed,
            total_wait=self._total_wait,
        )
