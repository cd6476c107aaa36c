"""The trio driver of `agent.swarm.planner.LayerPlanner`: one layer fetched through the swarm.

Theory of operation. The planner decides; this module does the I/O it asks for and reports
back. One loop task owns the planner (single owner, as the root's tracker owns its schedule):
it takes events from a bounded channel and carries out each `Decisions`. Plan requests and
chunk transfers run as tasks in the layer's nursery, each under its own cancel scope, and send
their outcome to the loop; a received chunk is hashed, stored through the `LayerSink` (the
layer download this swarm download fills), and reported once it is on disk. The whole-layer
digest is computed here as chunks complete in order and handed back to the download, which
checks it as it checks an origin download's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

import trio

from agent.cache.checksums import new_chunk_checksum
from agent.core.errors import RegistryError
from agent.http.client import HttpClientError
from agent.http.groups import first_failure
from agent.observe.auditline import failure_size
from agent.swarm.client import P2PClient, PeerError
from agent.swarm.pace import finishing_look
from agent.swarm.plan import table_digest
from agent.swarm.planner import Decisions, LayerPlanner, Transfer
from agent.swarm.protocol import PlanTarget
from agent.swarm.roots import RootSet
from agent.swarm.signing import is_clock_refusal

log = logging.getLogger(__name__)

Chunk = bytearray | memoryview
EVENTS_BUFFERED = 16  # outcomes waiting for the loop; tasks wait beyond that (backpressure)


class SwarmUnavailable(Exception):
    """The swarm cannot deliver this layer (no root answers, it does not fit); the download
    goes to the origin instead. `kind` names the cause for metrics."""

    def __init__(self, reason: str, kind: str = "cache") -> None:
        super().__init__(reason)
        self.kind = kind


class HandedHere(Exception):
    """The layer's first root handed it to this very node, a root: its own download is then
    the cluster's one trip to the origin (asking its own tracker would wait on itself)."""


@dataclass(eq=False, kw_only=True)
class SwarmContext:
    """What a node needs to fetch layers through the swarm."""

    node: str  # this node's id, nodeIP:p2pPort
    roots: RootSet
    client: P2PClient
    # Plan demand: one transfer at a time (links do best with one transfer each, see
    # agent/swarm/schedule.py) plus a spare the root uses for a second source when one runs late.
    parallel: int = 2
    # A transfer may take `chunk_timeout` plus its bytes at `min_chunk_rate`: a fixed 15 s cut
    # every transfer of a node on a slow link (2 Mbit/s, two layers at once, each transfer
    # sharing it with the next one's first bytes: 1 MiB in 17 s) after most of its bytes had
    # come, and it fetched them again: 1.5-1.7 x its link's floor in the chaos bench. A source
    # that stalls is cut by the HTTP client's read timeout; a slow one loses to a second
    # source (the root's late transfers) before this.
    chunk_timeout: float = 15.0
    min_chunk_rate: float = 64 * 1024  # bytes per second
    plan_timeout: float = 10.0
    # Layers fetched from the registry because the swarm could not deliver, by cause.
    fallbacks: dict[str, int] = field(default_factory=dict)
    peer_bytes: int = 0
    sealed: int = 0  # layers verified by a root's seal instead of a whole-layer pass
    rehashed_bytes: int = 0  # bytes hashed a second time, for a whole-layer digest
    # Requests a root refused because this node's clock and the root's are too far apart.
    clock_refusals: int = 0
    # On a root: the root its tracker handed a layer to (`agent.swarm.ownership`), if it did;
    # the root's own client asks that root too instead of going to the origin.
    handed_to: Callable[[str], str | None] = field(default=lambda digest: None)

    def fell_back(self, kind: str) -> None:
        self.fallbacks[kind] = self.fallbacks.get(kind, 0) + 1

    def clock_refused(self, root: str, why: str) -> None:
        """Signatures are good for MAX_SKEW of clock difference: past that, every request is
        refused, and the node pulls from the registry, until someone fixes its clock."""
        if self.clock_refusals % 100 == 0:  # the first, then every hundredth: loud, bounded
            log.error(
                "root %s refused our request because our clocks differ (%s): this node's time "
                "is off; fix it (NTP). Until then its layers come from the registry.",
                root,
                why,
            )
        self.clock_refusals += 1


class LayerSink(Protocol):
    """The layer download a swarm download fills (`agent.fetch.download.LayerDownload`)."""

    stream_mode: bool

    def begin(self, size: int) -> None:
        """The layer's size is known: lay it out and admit it to the cache."""

    def new_buffer(self, length: int) -> Chunk: ...

    async def emit(self, index: int, data: Chunk, sha256: str, checksum: int) -> None:
        """Chunk `index` is verified: readable at once, written to the cache meanwhile."""

    async def wait_written(self, index: int) -> None: ...

    async def chunk_bytes(self, index: int) -> Chunk:
        """A stored chunk's bytes (memory or disk), for the whole-layer hash."""

    def held_chunks(self) -> frozenset[int]:
        """The chunks already stored when the layer was admitted (a resumed download)."""

    @property
    def window(self) -> int | None:
        """Chunks the cache holds at once: a layer bigger than the cache passes through a
        ring of slots (`agent.fetch.window`); None: the whole layer fits."""

    def watch_readers(self, moved: Callable[[], None]) -> None:
        """Call `moved` when a reader advances or leaves (chunks behind them may go), or a
        chunk left the cache (`take_evicted`)."""

    def take_evicted(self) -> set[int]:
        """The chunks whose slots took other chunks since the last call."""

    def past(self) -> int:
        """The first chunk a reader still needs (nothing below is wanted any more)."""

    def hashed(self, count: int) -> None:
        """Chunks [0, count) are in the whole-layer hash, under the seal, or left for a pass
        from the disk at the end (a ring's slots below may take other chunks)."""

    def arrived(self, kind: str, source: str, index: int, size: int, t0: float) -> None:
        """Account a chunk from a root or peer (size < 0: the transfer failed)."""

    def verify_time(self, seconds: float) -> None: ...

    def landing(self, index: int, coming: bool, prefix: memoryview | None = None) -> None:
        """Chunk `index` is in its last bytes here and the root counts this node as its holder
        (`coming`; `prefix`: its bytes in so far, in the buffer that will hold it whole), or
        no longer on its way (it landed, or its transfers failed): the P2P port relays the
        prefix to peers that ask meanwhile, and the rest once the chunk is verified."""


# An event for the loop: a planner method with its arguments bound, waiting only for `now`.
Event = Callable[[float], Decisions]


class SwarmDownload:
    """Fetch one layer's chunks from peers, as its owning root assigns them."""

    def __init__(
        self,
        *,
        swarm: SwarmContext,
        sink: LayerSink,
        digest: str,
        algorithm: str,
        upstream: str,
        repo: str,
        chunk_size: int,
        authorization: bytes | None,
        expected_size: int | None = None,
    ) -> None:
        self._swarm = swarm
        self._sink = sink
        self._digest = digest
        self._authorization = authorization
        # The root the layer's first root handed it to (`Plan.handoff`): asked from then on.
        self._handed_to = swarm.handed_to(digest)
        self.answered_by: str | None = None  # the root whose plans we follow (and its seal)
        self.planner = LayerPlanner(
            digest=digest,
            upstream=upstream,
            repo=repo,
            chunk_size=chunk_size,
            parallel=swarm.parallel,
            denied_means_fallback=bool(authorization) and not swarm.client.tls,
            expected_size=expected_size,
        )
        self._hasher = hashlib.new(algorithm)
        self._hashed_upto = 0  # chunks [0, n) are hashed, sealed or deferred (memory may go)
        self._hasher_at = 0  # the next chunk the whole-layer hash takes
        self._expected_hex = digest.partition(":")[2]
        # The seal: once a root vouches for the layer (Plan.table_sha256), chunks are checked
        # against the chunk table only; at the end the table of the chunks we hold must be the
        # sealed one. Chunks kept from before (a resumed download) keep the whole-layer pass.
        self._chunk_sha: dict[int, str] = {}  # the sha256 of each chunk's bytes as stored
        self._resumed = False
        self._hash_lock = trio.Lock()
        self._emitted: set[int] = set()  # readable through the sink
        # Received and verified, not stored yet: the bytes and their sha256.
        self._buffers: dict[Transfer, tuple[Chunk, str, int]] = {}  # bytes, sha256, xxh3
        self._started: dict[Transfer, float] = {}
        self._scopes: dict[Transfer, trio.CancelScope] = {}
        self._landing: set[int] = set()  # chunks said `finishing`, not stored yet (`landing`)
        self._poll_scope: trio.CancelScope | None = None
        self._wake_at: float | None = None  # of the last decisions carried out
        self._moved_queued = False  # a readers-moved event waits in the channel
        self._moved_pending = False  # a reader moved when the channel was full
        self._send, self._receive = trio.open_memory_channel[Event](EVENTS_BUFFERED)

    async def run(self) -> str:
        """Fetch every chunk; returns the hex digest of the layer's bytes in order.

        Raises SwarmUnavailable (fetch from the origin instead) or RegistryError (the root's
        answer for the client)."""
        try:
            async with trio.open_nursery() as nursery:
                decisions = self.planner.start(trio.current_time())
                while not self._carry_out(decisions, nursery):
                    if self._moved_pending:  # a reader moved while the channel was full
                        self._moved_pending = False
                        decisions = self._release_behind_readers(trio.current_time())
                        continue
                    with trio.move_on_at(self._wake_at or math.inf):
                        event = await self._receive.receive()
                        decisions = event(trio.current_time())
                        continue
                    decisions = self.planner.tick(trio.current_time())
                nursery.cancel_scope.cancel()  # a standing request still held at the root
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
        finally:
            for index in self._landing:  # a fallback brings them, or nothing does
                self._sink.landing(index, False)
            self._landing.clear()
        await self._advance_hash()  # chunks held from the start may not have been hashed yet
        if self._sealed:  # (the seal may have come with the last reports' answers)
            return self._sealed_digest()
        await self._hash_upto(self.planner.count or 0)  # no seal came: the deferred chunks
        return self._hasher.hexdigest()

    @property
    def _sealed(self) -> bool:
        """A root vouches for the layer, and every chunk we hold was checked on arrival
        against its table (chunks kept from before a restart keep the whole-layer pass)."""
        return self.planner.sealed is not None and not self._resumed

    def _sealed_digest(self) -> str:
        """The layer's digest as the root's seal vouches for it, if the chunks we hold are the
        ones it sealed; else a value that matches no digest."""
        count = self.planner.count or 0
        table = [self._chunk_sha.get(i, "") for i in range(count)]
        if all(table) and table_digest(table) == self.planner.sealed:
            self._swarm.sealed += 1
            return self._expected_hex
        log.warning("layer %s: the chunks do not match the root's sealed table", self._digest)
        return "sealed-table-mismatch"

    def _readers_moved(self) -> None:
        """A reader advanced: the chunks behind every reader leave the planner's window (their
        bytes stay in their slots until the slots are needed). Coalesced: one event waits."""
        if self._moved_queued:
            return
        try:
            self._send.send_nowait(self._release_behind_readers)
            self._moved_queued = True
        except trio.WouldBlock:
            self._moved_pending = True  # the loop looks before its next wait
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the layer's swarm part is over

    def _release_behind_readers(self, now: float) -> Decisions:
        self._moved_queued = False
        past = self._sink.past()
        gone = {c for c in self.planner.held if c < past}
        return self.planner.released(gone, past, now, evicted=self._sink.take_evicted())

    def _received(
        self, transfer: Transfer, sha256: str, waited: float | None, now: float
    ) -> Decisions:
        chunk, source = transfer.chunk, transfer.source
        decisions = self.planner.received(chunk, source, sha256, now, waited=waited)
        if decisions.store != transfer:  # bad, or a copy of a chunk we have: let it go
            self._buffers.pop(transfer, None)
            self._started.pop(transfer, None)
        return decisions

    def _carry_out(self, decisions: Decisions, nursery: trio.Nursery) -> bool:
        """Do what the planner decided; True when the layer's swarm part is over."""
        self._wake_at = decisions.wake_at
        if decisions.bench is not None:
            self._swarm.roots.bench(decisions.bench, "no plan answer")
        if decisions.error is not None:
            status, message = decisions.error
            raise RegistryError(status, "UNAVAILABLE" if status >= 500 else "DENIED", message)
        fallback = decisions.fallback
        if fallback is not None:
            if fallback.root is not None:
                self._swarm.roots.distrust(fallback.root, self._digest, fallback.reason)
            raise SwarmUnavailable(fallback.reason, fallback.kind)
        if decisions.size is not None:
            # The size comes alone: admit the layer, then the planner goes on with what we hold.
            assert not (decisions.start or decisions.requests or decisions.store), decisions
            self._sink.begin(decisions.size)
            if self._sink.stream_mode:
                raise SwarmUnavailable("the layer does not fit this node's cache")
            held = self._sink.held_chunks()
            self._emitted |= held
            self._resumed = bool(held)
            window = self._sink.window
            if window is not None:
                self._sink.watch_readers(self._readers_moved)
            now = trio.current_time()
            return self._carry_out(self.planner.admitted(held, now, window=window), nursery)
        for transfer in decisions.cancel:
            scope = self._scopes.pop(transfer, None)
            if scope is not None:
                scope.cancel()
        if decisions.drop_poll and self._poll_scope is not None:
            self._poll_scope.cancel()
        if decisions.store is not None:
            nursery.start_soon(self._store, decisions.store)
        if self._landing:  # chunks nothing brings any more, or stored (servable from here)
            planner = self.planner
            for index in [i for i in self._landing if i not in planner.fetching]:
                if index not in planner.storing:
                    self._landing.discard(index)
                    self._sink.landing(index, False)
        for transfer in decisions.start:
            scope = self._scopes[transfer] = trio.CancelScope()
            nursery.start_soon(self._transfer, transfer, scope)
        for request in decisions.requests:
            if not self._swarm.roots.owners(self._digest):
                return self._carry_out(self.planner.no_root(trio.current_time()), nursery)
            scope = trio.CancelScope()
            if request.poll:
                self._poll_scope = scope
            nursery.start_soon(self._ask, request, scope)
        return decisions.finished

    def _route(self, request: PlanTarget) -> tuple[str, PlanTarget]:
        """The root to ask, and what: the layer's owner; after a handoff the root it was
        handed to, told so (`handed`); or, when that root is not ours to ask (benched, not in
        our roots), the first root again, told we could not follow, so it takes the layer."""
        owners = self._swarm.roots.owners(self._digest)
        if self._handed_to is None and owners:
            return owners[0], request
        handed = replace(request, handed=True)
        if self._handed_to in owners:
            return self._handed_to, handed
        return (owners or [self._handed_to])[0], handed

    # -- tasks ------------------------------------------------------------------------------

    async def _ask(self, request: PlanTarget, scope: trio.CancelScope) -> None:
        with scope:
            root, asked = self._route(request)
            for _ in range(2):  # a handoff costs one more request, never two
                try:
                    with trio.fail_after(self._swarm.plan_timeout):
                        plan = await self._swarm.client.plan(root, asked, self._authorization)
                except (PeerError, trio.TooSlowError) as exc:
                    if isinstance(exc, PeerError) and exc.status == 401:
                        if is_clock_refusal(str(exc)):
                            self._swarm.clock_refused(root, str(exc))
                    await self._send.send(
                        partial(self.planner.unanswered, request, root, str(exc) or "timed out")
                    )
                    return
                if plan.handoff is None or asked.handed:
                    break
                log.info("layer %s: root %s hands it to %s", self._digest, root, plan.handoff)
                self._handed_to = plan.handoff
                root, asked = self._route(request)
                if root == self._swarm.node:
                    raise HandedHere(f"{plan.handoff} is this node")
            if plan.handoff is not None:  # a root must take a layer handed to it
                why = f"handed the layer on to {plan.handoff} when it was handed to it"
                await self._send.send(partial(self.planner.unanswered, request, root, why))
                return
            self.answered_by = root
            await self._send.send(partial(self.planner.answered, request, plan, root))
        log.debug(
            "layer %s: plan from %s (poll=%s want=%d done=%d failed=%d)",
            self._digest,
            root,
            request.poll,
            request.want,
            len(request.done),
            len(request.failed),
        )

    async def _transfer(self, transfer: Transfer, scope: trio.CancelScope) -> None:
        swarm, sink = self._swarm, self._sink
        index, source = transfer.chunk, transfer.source
        planner = self.planner
        assert planner.layout is not None
        length = planner.layout.length(index)
        buffer = sink.new_buffer(length)
        kind = "root" if source in swarm.roots.addresses else "peer"
        t0, began = time.perf_counter(), time.time()
        told = False
        # For the trace: seconds after t0 to the first look (1 MiB in) and to `finishing`.
        trace = {"first": -0.001, "said": -0.001, "head": -0.001}

        def headed() -> None:  # the first byte: how long a transfer waits for it (the lead)
            trace["head"] = time.perf_counter() - t0

        # Fed as the bytes land: the check against the root's table, the cache's own sum.
        hasher, checksum, hashing = hashlib.sha256(), new_chunk_checksum(), 0.0

        async def progress(filled: int) -> int | None:
            """Say `finishing` once the rest needs less than the planner's lead; until then,
            the fill at which to hear again (`finishing_look`)."""
            nonlocal told
            elapsed = time.perf_counter() - t0
            if trace["first"] < 0:
                trace["first"] = elapsed
            if told or filled >= length:
                return length  # the end itself is reported as received
            look = finishing_look(length, filled, elapsed, planner.finish_lead)
            if look is not None:
                return look
            told = True
            trace["said"] = elapsed
            self._landing.add(index)
            sink.landing(index, True, memoryview(buffer)[:filled])
            waited = trace["head"]
            await self._send.send(partial(planner.finishing, index, source, waited=waited))
            return length

        with scope:
            try:
                with trio.fail_after(swarm.chunk_timeout + length / swarm.min_chunk_rate):
                    hashing = await swarm.client.fetch_chunk(
                        source,
                        self._digest,
                        index,
                        length,
                        into=memoryview(buffer),
                        progress=progress,
                        hashers=(hasher, checksum),
                        headed=headed,
                    )
            except (PeerError, HttpClientError, trio.TooSlowError) as exc:
                log.info("layer %s: chunk %d from %s failed: %s", self._digest, index, source, exc)
                sink.arrived(kind, source, index, failure_size(exc), t0)
                self._scopes.pop(transfer, None)
                gone = isinstance(exc, PeerError) and exc.status == 404  # evicted there
                event = self.planner.missing if gone else self.planner.failed
                await self._send.send(partial(event, index, source))
                return
        if scope.cancelled_caught:
            return  # the endgame's loser: the chunk came from elsewhere
        self._scopes.pop(transfer, None)
        if log.isEnabledFor(logging.DEBUG):  # a trace of every transfer (bench --verbose)
            log.debug(
                "layer %s: chunk %d (%d bytes) from %s began at %.3f: head after %.0f ms, "
                "1 MiB in after %.0f ms, `finishing` after %.0f ms, all in after %.0f ms",
                self._digest,
                index,
                length,
                source,
                began,
                1000 * trace["head"],
                1000 * trace["first"],
                1000 * trace["said"],
                1000 * (time.perf_counter() - t0),
            )
        sha = hasher.hexdigest()
        sink.verify_time(hashing)
        if sha != planner.hashes.get(index):
            log.warning("layer %s: %s sent a bad chunk %d", self._digest, source, index)
            sink.arrived(kind, source, index, -1, t0)
        else:
            self._buffers[transfer] = (buffer, sha, checksum.intdigest())
            self._started[transfer] = t0
        waited = None if told else trace["head"]
        await self._send.send(partial(self._received, transfer, sha, waited))

    async def _store(self, transfer: Transfer) -> None:
        buffer, sha, checksum = self._buffers.pop(transfer)
        self._chunk_sha[transfer.chunk] = sha
        t0 = self._started.pop(transfer)
        index, source = transfer.chunk, transfer.source
        kind = "root" if source in self._swarm.roots.addresses else "peer"
        self._sink.arrived(kind, source, index, len(buffer), t0)
        await self._sink.emit(index, buffer, self.planner.hashes[index], checksum)
        self._emitted.add(index)
        # Reported only once on disk: from then on the root sends peers here, and the P2P
        # port serves chunks from the cache file.
        await self._sink.wait_written(index)
        await self._advance_hash()
        self._swarm.peer_bytes += len(buffer)
        await self._send.send(partial(self.planner.stored, index, source))

    async def _advance_hash(self) -> None:
        """The whole-layer digest needs the bytes in order; chunks arrive out of order.

        A root seals a layer once its own download is verified, which is before any agent
        can get the last chunk (the root holds it back until then, and assigns only chunks it
        holds): so a layer the whole cache keeps waits for the seal instead of hashing its
        chunks a second time as they come, and hashes them (back from the disk) only when
        the swarm part ends without one. Chunks held from before and a ring's chunks (gone
        once read) are hashed as they come."""
        async with self._hash_lock:
            count = self.planner.count or 0
            while self._hashed_upto < count and self._hashed_upto in self._emitted:
                # Under the seal no second pass over the bytes; a whole layer waits for it.
                if self._resumed or (not self._sealed and self._sink.window is not None):
                    await self._hash_upto(self._hashed_upto + 1)
                self._hashed_upto += 1
            self._sink.hashed(self._hashed_upto)

    async def _hash_upto(self, stop: int) -> None:
        """Feed chunks up to `stop` to the whole-layer hash (from memory, or the disk)."""
        while self._hasher_at < stop:
            data = await self._sink.chunk_bytes(self._hasher_at)
            hashing = time.perf_counter()
            self._hasher.update(data)
            self._sink.verify_time(time.perf_counter() - hashing)
            self._swarm.rehashed_bytes += len(data)
            self._hasher_at += 1
