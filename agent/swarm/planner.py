"""The agent's side of the swarm for one layer: what to ask the root, which transfers to start,
what to report. Pure, no I/O.

Theory of operation
-------------------
An agent that fetches a layer through the swarm holds one `LayerPlanner`, the mirror image of
the root's `agent.swarm.schedule.LayerSchedule`. Its trio driver (`agent.swarm.download`) feeds
it events and carries out the `Decisions` each event returns; the simulator (`pollen simulate`)
feeds the same events from virtual links, so a simulated agent runs the logic a real one runs.
Every event carries `now` (seconds, never decreasing); it never reads a clock or sends.

    events in                               decisions out
    start                                   plan requests to send (`PlanTarget`)
    answered(request, plan) / unanswered    transfers to start, transfers to cancel
    no_root                                 the layer's size, once known (`size`)
    received(chunk, source, sha256)         a received chunk to store (`store`)
    stored(chunk, source)                   a root to bench, a fallback to the origin,
    failed(chunk, source)                   an error for the client, `finished`
    admitted(held, window), released,       when to call `tick` next (`wake_at`)
    missing, finishing, tick

Plan requests are of two kinds. The *standing* request (``poll``), at most one in flight,
asks for work; the root holds it until it has some, so new work reaches the agent at once.
*Reports* (not ``poll``) go the moment a transfer ends, so the source's upload slot at the
root frees without waiting for the standing request; a report may bring work too. Demand
(``want``) is the free transfer slots: `depth` transfers plus a spare the root uses for a second
source when one runs late (`parallel` - 1), less the transfers in flight. The depth is 1 unless
a chunk crosses the link faster than a plan round trip (10 Gbit/s: 3.4 ms per 4 MiB): then as
many as the round trips between one transfer and the next take (agent/swarm/depth.py). While a
transfer runs, the standing request for the spare goes only once it is late (LATE times the
usual duration, as the root judges) or in the endgame: reports carry demand too, and the next
chunk comes with the `finishing` one.

- Transfers running long and nothing asked for KEEPALIVE: our holdings go (GONE_AFTER).
- A transfer's slot frees when its bytes arrived; a chunk is reported done once stored.
- Pipelining and cut-through: the driver says a transfer is `finishing` once its remaining
  bytes need less than `finish_lead` (a report's round trip and a transfer's wait for its
  first byte, measured: the next one needs both to start) at the rate so far;
  its slot frees then and the root hears it at once, so the next transfer is under way as
  this one ends. For the root the transfer is done then: it sends peers here at once (the P2P
  port relays the chunk: the bytes in so far, the rest once verified), and no `done` follows
  it. The chunk is *vouched* for until it is stored; a transfer that fails after its
  `finishing` is reported `failed`, which takes the holding back at the root.
- A chunk whose sha256 does not match the root's table is reported as bad data (the root bans
  that source for the layer); a transfer that failed otherwise is reported as failed.
- The first copy of a chunk to arrive wins; its other transfers (endgame) are cancelled.
- A root that does not answer is benched (the driver's root set moves the layer to the next
  root in rendezvous order); reports it did not take go again, and the next request says what
  this node holds, since the new root knows nothing of it.
- The swarm is an accelerator, never a reason to fail a pull the registry would serve: this
  node fetches the layer from the registry itself (`Fallback`) when no root answers, a root
  fails (5xx), refuses with 401/403 while the client's credentials could not reach it (no P2P
  TLS), cuts chunks unlike us or gives another size than the registry, or no root knows the
  size within `size_deadline`. Such a root is named, so the driver does not ask it about this
  layer again for a while. The registry's answers a root passes on (404, 401 with
  credentials, 429) are the client's to see.
- The first answer with the layer's size returns `size` alone: the driver admits the layer to
  its cache and calls `admitted` with the chunks it already holds (a download resumed after a
  crash), and the work parked meanwhile starts then; the root learns those chunks with `have`.
- A layer bigger than this node's cache passes through a *window*: `admitted(window=W)` caps
  the chunks held plus those on their way at W, and the driver lets chunks go once its readers
  are past them (`released`, with `past`, the first chunk still wanted): the root no longer
  assigns them to this node, which stays their source until their slots take other chunks
  (`released(evicted=...)`; the root hears `have` without them). Completion counts chunks
  stored at some point (`got`), not chunks held. W must exceed the root's window plus
  `parallel`, so that chunks arriving out of order never fill the cache while an earlier one
  is still missing.
- When every chunk is stored the standing request is dropped and the last reports are sent
  (a few attempts), then the planner is finished. Chunks are `agent.cache.chunks`' (a short
  head): durations are a whole chunk's (`usual`), shares of one (the depth's `part`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.cache.chunks import ChunkLayout
from agent.swarm.decisions import Decisions, Fallback, Pending, Transfer, refusal, unusable
from agent.swarm.depth import PipelineDepth
from agent.swarm.plan import Plan
from agent.swarm.protocol import MAX_DEPTH, PlanTarget, clip_ranges
from agent.swarm.reports import Reports

__all__ = ["FALLBACK_KINDS", "Decisions", "Fallback", "LayerPlanner", "Transfer"]

POLL_RETRY = 0.05  # s before asking again after an answer that started nothing
KEEPALIVE = 2.0  # s: the longest a node downloading stays silent (the root's LONG_POLL)
# A transfer is reported `finishing` when its remaining bytes need less than this many report
# round trips (the next assignment's trip to us, then its first byte's); DEFAULT_RTT until
# the first report's round trip is measured.
LEAD_RTTS = 3.0
DEFAULT_RTT = 0.01  # s
RTT_SAMPLES = 8  # the round trip is the least of this many recent ones
FLUSH_ATTEMPTS = 3  # tries to deliver the last reports once the layer is complete
# The spare slot's standing request (a second source for a late transfer) goes when a transfer
# has run LATE times the usual duration (the root's rule, agent/swarm/schedule.py), or at once
# in the endgame (ENDGAME chunks or fewer to come), not for every transfer: a third of the
# plan requests were spare polls answered empty.
LATE = 2.0
ENDGAME = 2
USUAL_WEIGHT = 0.25  # of the newest transfer in the moving average of their durations
# Why a node leaves the swarm for a layer; "cache": the layer does not fit this node's cache
# (the driver's own cause, for metrics).
FALLBACK_KINDS = ("no_root", "root_error", "credentials", "chunk_size", "size", "no_size", "cache")
UNKNOWN_DEPTH = "unknown plan parameter 'depth'"  # a root from before `PlanTarget.depth`
SIZE_DEADLINE = 30.0  # s: a root that cannot tell the layer's size by then is not helping


@dataclass(eq=False, kw_only=True)
class LayerPlanner:
    """One layer's swarm download as seen by the agent that fetches it.

    `denied_means_fallback`: the client sent credentials that cannot reach the root (no P2P
    TLS), so a 401/403 from the root is the root's answer, not the client's.
    """

    digest: str
    upstream: str  # the registry, as Upstream.key
    repo: str
    chunk_size: int  # ours; a root with another one cannot serve us
    head_chunk: int = 0  # ours too (agent.cache.chunks: 0 by the rule, chunk_size: no head)
    parallel: int = 2  # transfer slots: one, and a spare for a second source
    max_depth: int = MAX_DEPTH  # transfers kept in flight at most (agent/swarm/depth.py)
    denied_means_fallback: bool = False
    expected_size: int | None = None  # the layer's size as the registry told this node
    size_deadline: float = SIZE_DEADLINE  # s for a root to learn the size, else fallback
    # State, from the events.
    size: int | None = field(default=None, init=False)
    count: int | None = field(default=None, init=False)
    layout: ChunkLayout | None = field(default=None, init=False)  # with the size
    held: set[int] = field(default_factory=set, init=False)  # in this node's cache now
    # Behind the readers (out of the window) but still in their slots: peers may have them.
    passed: set[int] = field(default_factory=set, init=False)
    got: set[int] = field(default_factory=set, init=False)  # stored at some point
    window: int | None = field(default=None, init=False)  # chunks the cache holds at once
    past: int = field(default=0, init=False)  # chunks below this are no longer wanted
    hashes: dict[int, str] = field(default_factory=dict, init=False)
    sealed: str | None = field(default=None, init=False)  # a root's seal (Plan.table_sha256)
    fetching: dict[int, set[str]] = field(default_factory=dict, init=False)  # chunk -> sources
    storing: set[int] = field(default_factory=set, init=False)  # accepted, not stored yet
    reports: Reports = field(default_factory=Reports, init=False)  # owed to the root
    tailing: set[tuple[int, str]] = field(default_factory=set, init=False)  # said finishing
    # chunk -> source: arrived by a transfer that said `finishing` (the root counts the chunk
    # as ours already), not stored yet; its `finishing` stands for its `done`.
    vouched: dict[int, str] = field(default_factory=dict, init=False)
    # Chunks said `finishing` whose holding the root may have dropped since (a `have` went
    # without them, or the root assigned them again): their `done` goes after all.
    retell: set[int] = field(default_factory=set, init=False)
    rtt: float = field(default=DEFAULT_RTT, init=False)  # s, reports' round trip (recent least)
    rtt_samples: list[float] = field(default_factory=list, init=False)
    waits: list[float] = field(default_factory=list, init=False)  # s to a first byte, recent
    sent_at: dict[int, float] = field(default_factory=dict, init=False)  # id(report) -> time
    tell_have: bool = field(default=False, init=False)  # the next request says what we hold
    polling: bool = field(default=False, init=False)  # the standing request is in flight
    reporting: int = field(default=0, init=False)  # report requests in flight
    poll_at: float | None = field(default=None, init=False)  # when to poll again
    flushes_left: int = field(default=FLUSH_ATTEMPTS, init=False)
    outcome: str | None = field(default=None, init=False)  # finished, fallback or error
    ready: bool = field(default=False, init=False)  # the driver admitted the layer (`admitted`)
    parked: list[tuple[int, str]] = field(default_factory=list, init=False)  # until admitted
    started_at: float | None = field(default=None, init=False)
    began: dict[tuple[int, str], float] = field(default_factory=dict, init=False)  # transfers
    usual: float | None = field(default=None, init=False)  # s, a whole chunk (moving average)
    pipeline: PipelineDepth = field(init=False)  # transfers to keep in flight
    told_want: int = field(default=0, init=False)  # the demand the root heard last
    fresh: bool = field(default=True, init=False)  # the first request says: forget the past
    asked_at: float | None = field(default=None, init=False)  # the last request went then

    # -- queries ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(sources) for sources in self.fetching.values())

    def __post_init__(self) -> None:
        self.pipeline = PipelineDepth(limit=self.max_depth)

    @property
    def depth(self) -> int:
        """Transfers to keep in flight (agent/swarm/depth.py)."""
        return self.pipeline.value

    @property
    def finish_lead(self) -> float:
        """Seconds before a transfer's end at which to say `finishing`: the report's round
        trip and a new transfer's wait for its first byte (the recent median), once known."""
        waits = sorted(self.waits)
        return self.rtt + waits[len(waits) // 2] if waits else LEAD_RTTS * self.rtt

    def _waited(self, seconds: float | None) -> None:  # a transfer's wait for its first byte
        self.waits = self.waits if seconds is None else [*self.waits[1 - RTT_SAMPLES :], seconds]

    @property
    def complete(self) -> bool:
        return self.count is not None and len(self.got) == self.count

    @property
    def over(self) -> bool:
        return self.outcome is not None

    # -- events -----------------------------------------------------------------------------

    def start(self, now: float) -> Decisions:
        """Begin: the standing request goes out."""
        pending = Pending()
        self.started_at = now
        self._poll(pending, now)
        return self._settle(pending, now)

    def no_root(self, now: float) -> Decisions:
        """The driver found no root to send a request to."""
        pending = Pending(fallback=Fallback(kind="no_root", reason="no root answers"))
        return self._settle(pending, now)

    def answered(self, request: PlanTarget, plan: Plan, root: str, now: float) -> Decisions:
        """`root` answered `request` with `plan`."""
        pending = Pending()
        self._request_ended(request)
        sent = self.sent_at.pop(id(request), None)
        # Most `finishing` reports ride on the standing request, which the root may hold
        # until it has work: its answers can only be longer than a round trip, so the round
        # trip is the least of the recent ones (a moving average drifted to 10-20 x it in
        # the simulator, and every chunk said `finishing` that much too early).
        if sent is not None and (not request.poll or plan.assignments):
            self.rtt_samples = [*self.rtt_samples[1 - RTT_SAMPLES :], now - sent]
            self.rtt = min(self.rtt_samples)
        if request.have is not None:
            self.tell_have = False
        if plan.error is not None:
            pending.fallback, pending.error = refusal(plan, root, self.denied_means_fallback)
            return self._settle(pending, now)
        started = 0
        if plan.size is not None:
            if self.size is None:
                ours = ChunkLayout(
                    size=plan.size, chunk_size=self.chunk_size, head_chunk=self.head_chunk
                )
                pending.fallback = unusable(plan, root, ours, self.expected_size)
                if pending.fallback is not None:
                    return self._settle(pending, now)
                self.size, self.layout, self.count = plan.size, ours, ours.count
                pending.size = plan.size
            self.hashes.update(plan.chunk_sha256)
            if plan.complete and plan.table_sha256 is not None:
                self.sealed = plan.table_sha256  # the root vouches for the whole (signed reply)
            if not self.ready:  # the driver admits the layer first, and says what it holds
                self.parked.extend(plan.assignments)
                return self._settle(pending, now)
            started = self._take(plan.assignments, pending, now)
        if request.poll:
            self.poll_at = now if started else now + POLL_RETRY
        return self._go_on(pending, now)

    def unanswered(self, request: PlanTarget, root: str, reason: str, now: float) -> Decisions:
        """`root` did not answer `request` (unreachable, timed out, refused, a bad reply)."""
        pending = Pending(bench=root)
        if request.depth > 1 and UNKNOWN_DEPTH in reason:  # a root from before depth
            self.pipeline.limit = self.pipeline.value = 1  # one at a time, as it knows
            pending = Pending()  # no fault of the root: ask it again
        self._request_ended(request)
        self.sent_at.pop(id(request), None)
        self.fresh = self.fresh or request.fresh  # the next root must hear it too
        # Its reports go again (first), to whichever root owns the layer now, with our holdings.
        self.reports.again(request, tailing=self.tailing, vouched=self.vouched, held=self.held)
        self.tell_have = self.size is not None
        if request.poll:
            self.poll_at = now + POLL_RETRY
        elif self.complete:
            self.flushes_left -= 1
        return self._go_on(pending, now)

    def received(
        self, chunk: int, source: str, sha256: str, now: float, *, waited: float | None = None
    ) -> Decisions:
        """The bytes of chunk `chunk` arrived from `source`, hashing to `sha256` (`waited`:
        to its first byte, if it said no `finishing`)."""
        pending = Pending()
        self._waited(waited)
        began = self.began.get((chunk, source))
        said_finishing = (chunk, source) in self.tailing
        if not self._end_transfer(chunk, source):
            return self._settle(pending, now)  # cancelled meanwhile: nothing was asked of it
        if began is not None and sha256 == self.hashes.get(chunk):
            assert self.layout is not None
            whole = (now - began) / self.layout.scale(chunk)  # `usual` is a whole chunk's
            self.usual = (
                whole if self.usual is None else self.usual + USUAL_WEIGHT * (whole - self.usual)
            )
            part = self.layout.part(chunk)  # a head chunk, the last, are short
            self.pipeline.ended(began, now, self.began.values(), self.rtt, self.window, part)
        if sha256 != self.hashes.get(chunk):
            self.reports.failure(chunk, source, bad_data=True)
        elif chunk in self.got or chunk in self.storing:
            if not said_finishing:  # (`finishing` freed it already)
                self.reports.done.append((chunk, source))  # frees the source's slot at the root
        else:
            self.storing.add(chunk)
            if said_finishing:
                self.vouched[chunk] = source
            pending.store = Transfer(chunk=chunk, source=source)
            for other in sorted(self.fetching.pop(chunk, set())):
                self.began.pop((chunk, other), None)
                # A loser in its last bytes is no tail any more: the standing request would
                # wait for its report for ever (and `_want` count its slot twice).
                self.tailing.discard((chunk, other))
                pending.cancel.append(Transfer(chunk=chunk, source=other))
        return self._go_on(pending, now)

    def finishing(
        self, chunk: int, source: str, now: float, *, waited: float | None = None
    ) -> Decisions:
        """The transfer of `chunk` from `source` is in its last bytes (less than
        `finish_lead` seconds to go): its download slot is free for the next transfer, and the
        root hears it at once, so the next chunk is under way as this one ends (`waited`:
        from its request to its first byte)."""
        pending = Pending()
        self._waited(waited)
        transfer = (chunk, source)
        if source in self.fetching.get(chunk, ()) and transfer not in self.tailing:
            self.tailing.add(transfer)
            self.reports.finishing.append(transfer)
            self._poll(pending, now, carrying=True)
            self._report(pending)
        return self._settle(pending, now)

    def stored(self, chunk: int, source: str, now: float) -> Decisions:
        """The chunk accepted from `source` is in this node's cache (servable to peers)."""
        pending = Pending()
        self.storing.discard(chunk)
        self.held.add(chunk)
        self.got.add(chunk)
        if self.vouched.pop(chunk, None) != source or chunk in self.retell:
            self.reports.done.append((chunk, source))
        self.retell.discard(chunk)
        if self.complete and self.polling:
            self.polling = False
            pending.drop_poll = True
        return self._go_on(pending, now)

    def failed(self, chunk: int, source: str, now: float) -> Decisions:
        """The transfer of `chunk` from `source` failed (timeout, refused, not found)."""
        pending = Pending()
        if self._end_transfer(chunk, source):
            self.reports.failure(chunk, source, bad_data=False)
        return self._go_on(pending, now)

    def admitted(self, held: Iterable[int], now: float, *, window: int | None = None) -> Decisions:
        """The driver admitted the layer (its size came in the last `Decisions`); `held` are
        the chunks this node already has (a download resumed after a crash). Work parked
        meanwhile starts now; the root learns what we hold with the next request. `window`:
        the layer is bigger than the cache, which holds this many of its chunks at once; the
        driver then releases chunks behind the readers (`released`)."""
        pending = Pending()
        assert self.count is not None and not self.ready, "admitted once, after the size"
        self.ready = True
        self.window = window
        kept = {c for c in held if 0 <= c < self.count}
        self.held |= kept
        self.got |= kept
        self.tell_have = bool(kept)
        self._take(self.parked, pending, now)
        self.parked.clear()
        return self._go_on(pending, now)

    def released(
        self, chunks: Iterable[int], past: int, now: float, *, evicted: Iterable[int] = ()
    ) -> Decisions:
        """The readers are past `chunks` (out of the window; their bytes stay in the cache, a
        source for peers, until their slots are needed) and nothing below `past` is wanted;
        `evicted`: chunks whose slots took others. Room for more; the root hears it all with
        the next request (`past`, and `have` without the evicted chunks)."""
        pending = Pending()
        gone = set(chunks) & self.held
        self.held -= gone
        self.passed |= gone
        left = set(evicted) & (self.passed | self.held)
        self.passed -= left
        self.held -= left
        self.past = max(self.past, past)  # the next request carries it
        self.tell_have = self.tell_have or bool(left)
        self._poll(pending, now)
        # The root holds our standing request with the demand it last heard: 0 when the window
        # was full. Without a word now it would hear of the room only when the poll expires.
        held_idle = self.polling and self.told_want == 0 and self._want() > 0
        if (held_idle or left and not self.polling) and not pending.requests:
            self._report_holdings(pending)
        return self._settle(pending, now)

    def missing(self, chunk: int, source: str, now: float) -> Decisions:
        """`source` answered 404 for `chunk`: it does not hold it (any more). The root stops
        counting it as a holder and assigns the chunk elsewhere; no fault of the source."""
        pending = Pending()
        if self._end_transfer(chunk, source):
            self.reports.missing.append((chunk, source))
        return self._go_on(pending, now)

    def tick(self, now: float) -> Decisions:
        """Time passed (the standing request's retry came due, the size deadline, or a
        keepalive)."""
        pending = Pending()
        self._poll(pending, now)
        return self._settle(pending, now)

    # -- rules ------------------------------------------------------------------------------

    def _end_transfer(self, chunk: int, source: str) -> bool:
        self.tailing.discard((chunk, source))
        self.began.pop((chunk, source), None)
        sources = self.fetching.get(chunk)
        if sources is None or source not in sources:
            return False
        sources.discard(source)
        if not sources:
            del self.fetching[chunk]
        return True

    def _request_ended(self, request: PlanTarget) -> None:
        if request.poll:
            self.polling = False
        else:
            self.reporting -= 1
        self.reports.ended(request)

    def _take(self, assignments: Iterable[tuple[int, str]], pending: Pending, now: float) -> int:
        """Start the assigned transfers we can use; returns how many started."""
        started = 0
        for chunk, source in assignments:
            if chunk in self.got or chunk in self.storing:
                self.reports.done.append((chunk, source))  # nothing to fetch: free its slot
                continue
            sources = self.fetching.setdefault(chunk, set())
            if source in sources:
                continue
            if any((chunk, s) in self.tailing for s in sources):
                self.retell.add(chunk)  # the root forgot its `finishing`
            sources.add(source)
            self.began[(chunk, source)] = now
            pending.start.append(Transfer(chunk=chunk, source=source))
            started += 1
        return started

    def _want(self) -> int:
        if self.complete:
            return 0
        slots = self.depth + self.parallel - 1 - self.in_flight + len(self.tailing)  # (tails)
        if self.window is not None:  # room in the cache's window, counting what is on its way
            slots = min(slots, self.window - len(self.held) - self.in_flight - len(self.storing))
        return max(0, slots)

    def _have(self) -> frozenset[int] | None:
        if not self.tell_have or self.size is None:
            return None
        return clip_ranges(self.held | self.passed | self.vouched.keys())

    def _request(self, *, poll: bool) -> PlanTarget:
        done, failed, lost, ending = self.reports.take()
        fresh, self.fresh = self.fresh, False
        have, self.told_want = self._have(), self._want()
        if have is not None:  # it cannot list chunks in their last bytes: the root drops them
            self.retell.update(c for c, _ in self.tailing)
        return PlanTarget(
            fresh=fresh,
            digest=self.digest,
            upstream=self.upstream,
            repo=self.repo,
            want=self.told_want,
            have=have,
            done=done,
            failed=failed,
            missing=lost,
            finishing=ending,
            past=self.past,
            depth=self.depth,
            poll=poll,
        )

    def _poll(self, pending: Pending, now: float, *, carrying: bool = False) -> None:
        """Send the standing request when none is in flight, a slot is free and it is due.
        While a chunk is being stored (outside a window) that will be reported `done` (one
        that said `finishing` will not) it waits for that report and carries it, unless it
        carries a report already (`carrying`)."""
        if self.polling or self.complete or self._want() == 0:
            return
        if self.size is not None and not self.ready:
            return  # the layer is being admitted
        if self.poll_at is not None and now < self.poll_at:
            return
        # A store waits at most for the disk, unless the layer passes through a window: there
        # it may wait for a slot that only the readers free, and they may need the very
        # chunk this request would bring.
        storing = self.window is None and any(c not in self.vouched for c in self.storing)
        if storing and not carrying:
            return  # it goes with the report the store makes soon (done): one request, not two
        spare_at = self._spare_due()
        if spare_at is not None and now < spare_at and not carrying:
            return  # a transfer runs and is not late: the spare slot's request waits
        self.polling = True
        self.poll_at = None
        pending.requests.append(self._request(poll=True))

    def _spare_due(self) -> float | None:
        """When the standing request may go while transfers run: once one is late (None: now,
        there is a free slot beyond the spare, it is the endgame, or no duration is known)."""
        running = [t for t in self.began if t not in self.tailing]
        if not running or self.in_flight - len(self.tailing) < self.depth + self.parallel - 2:
            return None
        left = (self.count or 0) - len(self.got) - len(self.storing)
        if self.usual is None or left <= ENDGAME:
            return None
        assert self.layout is not None  # with `usual`
        return min(self.began[t] + LATE * self.usual * self.layout.scale(t[0]) for t in running)

    def _keepalive_due(self) -> float | None:
        """When to tell the root our holdings while transfers run and nothing else goes: it
        forgets a node silent for GONE_AFTER (6 s) with transfers to it, and a slow-link node
        (long transfers, none late) was forgotten 21 times in one chaos bench pull."""
        if not self.fetching or self.asked_at is None or self.polling or self.reporting:
            return None
        return self.asked_at + KEEPALIVE

    def _report_holdings(self, pending: Pending) -> None:
        """A report with nothing but our holdings: the root must stop naming us as a source
        of chunks we let go, even when there is no other reason to ask it anything."""
        if self.complete:
            return
        self.reporting += 1
        pending.requests.append(self._request(poll=False))

    def _report(self, pending: Pending) -> None:
        """Send what ended at once (the standing request, if it just went, carries it too)."""
        if not self.reports.waiting:
            return
        if self.complete and (self.reporting or self.flushes_left <= 0):
            return  # the last reports go one request at a time, a few attempts
        self.reporting += 1
        pending.requests.append(self._request(poll=False))

    def _go_on(self, pending: Pending, now: float) -> Decisions:
        """After an event: the standing request if due, the reports owed, then settle."""
        self._poll(pending, now)
        self._report(pending)
        return self._settle(pending, now)

    def _settle(self, pending: Pending, now: float) -> Decisions:
        deadline = None if self.started_at is None else self.started_at + self.size_deadline
        if self.size is None and pending.fallback is None and deadline is not None:
            if now >= deadline:
                reason = f"no root knew the layer's size within {self.size_deadline:g}s"
                pending.fallback = Fallback(kind="no_size", reason=reason)
        if pending.error is not None:
            self.outcome = "error"
        elif pending.fallback is not None:
            self.outcome = "fallback"
        elif self.complete and not self.polling and not self.reporting and not self.storing:
            if self.reports.waiting:
                self._report(pending)
            if not pending.requests:
                self.outcome = "finished"
        # A retry due later needs a wake-up; one already due waits for a free slot, which
        # only an event brings (a wake-up in the past would spin the driver).
        wakes = [self.poll_at] if not self.polling and (self.poll_at or 0.0) > now else []
        spare_at = None if self.polling else self._spare_due()
        if spare_at is not None and spare_at > now:
            wakes.append(spare_at)
        if self.size is None and deadline is not None:
            wakes.append(deadline)
        keepalive = self._keepalive_due() if self.outcome is None else None
        if keepalive is not None and keepalive <= now and not pending.requests:
            self.tell_have = True  # what we hold, should it have forgotten us meanwhile
            self.reporting += 1
            pending.requests.append(self._request(poll=False))
        if pending.requests:
            self.asked_at = now
        keepalive = self._keepalive_due() if self.outcome is None else None
        if keepalive is not None:
            wakes.append(keepalive)
        wake_at = min(wakes) if wakes and self.outcome is None else None
        running = self.outcome is None
        requests = tuple(pending.requests) if running or self.outcome == "finished" else ()
        for request in requests:
            if not request.poll or request.finishing:  # its round trip: when to say `finishing`
                self.sent_at[id(request)] = now
        return Decisions(
            requests=requests,
            start=tuple(pending.start) if running else (),
            cancel=tuple(pending.cancel),
            store=pending.store,
            size=pending.size,
            drop_poll=pending.drop_poll,
            bench=pending.bench,
            fallback=pending.fallback,
            error=pending.error,
            finished=self.outcome == "finished",
            wake_at=wake_at,
        )
