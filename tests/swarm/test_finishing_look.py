"""finishing_look: when a transfer's progress hook looks at its fill, and when it says
`finishing`. Pure; the reads are simulated."""

from __future__ import annotations

from agent.swarm.pace import MIN_LOOK_STEP, finishing_look

MiB = 1 << 20
CHUNK = 4 * MiB


class Arrival:
    """A chunk's bytes arriving `first_byte` s after the request: the first `fast_bytes` at
    `fast` bytes/s, the rest at `rate` (a sender whose link another transfer joined)."""

    def __init__(self, rate: float, first_byte: float, fast: float, fast_bytes: int) -> None:
        self.rate, self.first_byte, self.fast, self.fast_bytes = rate, first_byte, fast, fast_bytes
        self.turn_fast = first_byte + fast_bytes / fast

    def at(self, byte: int) -> float:
        """When byte `byte` is in."""
        if byte <= self.fast_bytes:
            return self.first_byte + byte / self.fast
        return self.turn_fast + (byte - self.fast_bytes) / self.rate

    def by(self, now: float) -> int:
        """Bytes in by `now`."""
        if now <= self.turn_fast:
            return int(max(0.0, now - self.first_byte) * self.fast)
        return min(CHUNK, self.fast_bytes + int((now - self.turn_fast) * self.rate))


def looks_for(arrival: Arrival, lead: float, turn: float) -> tuple[int, float]:
    """Each look reads up to the fill asked for (waiting for bytes not in yet, as
    SO_RCVLOWAT does) and costs `turn` s. How many looks until `finishing` was said, and how
    long before the chunk's end it was said."""
    end = arrival.at(CHUNK)
    now, filled, looks = arrival.at(MiB), MiB, 1  # the first look: FIRST_LOOK
    while looks < 100_000:
        look = finishing_look(CHUNK, filled, now, lead)
        if look is None:
            return looks, end - now
        looks += 1
        now = max(now + turn, arrival.at(look))
        filled = look
    return looks, 0.0


def test_a_few_looks_per_chunk() -> None:
    """Looks cost an event-loop turn each. When the rate falls during a chunk (its sender's
    link took on another transfer), the bytes wait in the socket and a look returns at once
    with the rate so far a little lower: the old point (`length - lead x rate`, no floor)
    then moved on by a few bytes per look, thousands of looks per chunk."""
    for first_byte in (0.0, 0.05, 0.3):
        for rate in (6.25e6, 25e6, 125e6):
            for fast in (1.0, 2.0, 4.0):
                arrival = Arrival(rate, first_byte, rate * fast, 2 * MiB)
                looks, early = looks_for(arrival, lead=0.045, turn=50e-6)
                assert looks <= 4, (first_byte, rate, fast, looks)
                assert early > 0, (first_byte, rate, fast, early)  # said before the end


def test_it_errs_early_by_at_most_a_step() -> None:
    """At a steady rate from the first byte, finishing comes lead before the end, never
    later, and at most a step earlier (MIN_LOOK_STEP's worth of time, or a quarter lead)."""
    rate, lead = 25e6, 0.045
    looks, early = looks_for(Arrival(rate, 0.0, rate, 0), lead, turn=0.0)
    assert lead * 0.99 <= early <= lead + max(MIN_LOOK_STEP / rate, lead / 4) + 1e-6
    assert looks == 2


def test_edges() -> None:
    assert finishing_look(CHUNK, CHUNK, 1.0, 0.1) is None  # all in
    assert finishing_look(CHUNK, MiB, 0.0, 0.1) is None  # no time measured: say it now
    assert finishing_look(CHUNK, 0, 1.0, 0.1) == CHUNK  # nothing in yet: look at the end
    # the rest is a step from the point: now
    assert finishing_look(CHUNK, CHUNK - MIN_LOOK_STEP, 1.0, 0.0) is None
    assert finishing_look(CHUNK, MiB, 1.0, 0.0) == CHUNK
    # a quarter of the lead's bytes is the step where that is more: 0.9 MiB come in the
    # lead, the rest is 1 MiB, within a quarter more: now
    assert finishing_look(CHUNK, 3 * MiB, 1.0, 0.3) is None
