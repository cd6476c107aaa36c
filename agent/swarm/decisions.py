"""What an agent's planner decides (`agent.swarm.planner`), as its driver
(`agent.swarm.download`) and the simulator carry it out: the transfers, the requests, the end
of the layer's swarm part; and what a root's answer that cannot be used means (a fallback, or
the client's error). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.cache.chunks import ChunkLayout
from agent.swarm.plan import Plan
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


def unusable(
    plan: Plan, root: str, layout: ChunkLayout, expected_size: int | None
) -> Fallback | None:
    """The first size a root gives must fit this node: our chunk layout for that size
    (`layout`), and the size the registry gave us (a root that disagrees is wrong, or lying)."""
    if plan.chunk_size != layout.chunk_size:
        reason = f"root {root} uses {plan.chunk_size}-byte chunks, we use {layout.chunk_size}"
        return Fallback(kind="chunk_size", reason=reason, root=root)
    if plan.head_chunk != layout.head_chunk:
        reason = (
            f"root {root} cuts the layer's head in {plan.head_chunk}-byte chunks, "
            f"we in {layout.head_chunk}"
        )
        return Fallback(kind="chunk_size", reason=reason, root=root)
    if expected_size is not None and plan.size != expected_size:
        reason = f"root {root} says {plan.size} bytes, the registry {expected_size}"
        return Fallback(kind="size", reason=reason, root=root)
    return None


def refusal(
    plan: Plan, root: str, denied_means_fallback: bool
) -> tuple[Fallback | None, tuple[int, str] | None]:
    """What a root's error answer means for this node: the registry's own answer for the
    client (4xx: not found, denied, too many requests) is the client's to see; a root that
    failed (5xx: it cannot hold the layer, the origin broke for it) or that could not use the
    client's credentials (no P2P TLS to pass them) is not, and the node asks the registry."""
    status = plan.error_status or 502
    message = f"root {root}: {plan.error}"
    if status >= 500:
        return Fallback(kind="root_error", reason=message, root=root), None
    if status in (401, 403) and denied_means_fallback:
        reason = (
            f"root {root} may not read it without credentials, and the P2P port has no TLS "
            "to pass them"
        )
        return Fallback(kind="credentials", reason=reason, root=root), None
    return None, (status, message)
