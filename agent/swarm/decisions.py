"""What an agent's planner decides (`agent.swarm.planner`), as its driver
(`agent.swarm.download`) and the simulator carry it out: the transfers, the requests, the end
of the layer's swarm part. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.swarm.protocol import PlanTarget


@dataclass(frozen=True, kw_only=True, slots=True)
class Transfer:
    """Fetch chunk `chunk` from node `source`."""

    chunk: int
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Fallback:
    """Why this node fetches the layer from the registry itself (the swarm cannot deliver).

    `kind` is a short word for metrics; `root`, when set, is the root not to ask about this
    layer again for a while (it answered, but not usefully)."""

    kind: str  # one of FALLBACK_KINDS
    reason: str
    root: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Decisions:
    """What an event decided; the driver carries it out in this order: errors and fallback
    end the layer; `size` before `start`; `store` before anything that waits on it."""

    requests: tuple[PlanTarget, ...] = ()
    start: tuple[Transfer, ...] = ()
    cancel: tuple[Transfer, ...] = ()
    store: Transfer | None = None  # the received bytes of this transfer are the chunk's
    size: int | None = None  # the layer's size became known: admit it
    drop_poll: bool = False  # cancel the standing request in flight (the layer is complete)
    bench: str | None = None  # root that did not answer
    fallback: Fallback | None = None  # this node fetches the rest from the origin itself
    error: tuple[int, str] | None = None  # (status, message) for the client
    finished: bool = False
    wake_at: float | None = None  # call `tick` then, unless another event comes first


@dataclass(kw_only=True)
class Pending:
    """Decisions being collected during one event."""

    requests: list[PlanTarget] = field(default_factory=list)
    start: list[Transfer] = field(default_factory=list)
    cancel: list[Transfer] = field(default_factory=list)
    store: Transfer | None = None
    size: int | None = None
    drop_poll: bool = False
    bench: str | None = None
    fallback: Fallback | None = None
    error: tuple[int, str] | None = None
