"""Which upstream registry serves a request, in the order of docs/ARCHITECTURE.md ("The proxy
port"), no I/O.

1. containerd's mirror parameter ``ns=<host[:port]>`` (a ``.distributed.`` name there counts
   as the registry it stands for);
2. a Host header carrying the label ``distributed`` (the webhook's rewritten image names);
3. ``defaultUpstream``.
The result must be one of ``upstreams``: anything else is refused with 403, so the agent is
never an open proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.core.errors import RegistryError
from agent.core.hostport import normalize_registry_host, split_hostport
from agent.core.upstream import Upstream

DISTRIBUTED_LABEL = "distributed"


def undistributed_host(host_header: str) -> str | None:
    """``a.distributed.b.c[:port]`` → ``a.b.c``; None when the name carries no such label.

    Only names of three or more labels qualify, and the port (the agent's own) is dropped.
    """
    try:
        host, _port = split_hostport(host_header)
    except ValueError:
        return None
    labels = host.lower().rstrip(".").split(".")
    if len(labels) < 3 or DISTRIBUTED_LABEL not in labels[1:]:
        return None
    idx = labels.index(DISTRIBUTED_LABEL, 1)
    return ".".join(labels[:idx] + labels[idx + 1 :])


def match_upstream(hostport: str, upstreams: Sequence[Upstream]) -> Upstream | None:
    """Find the configured upstream a client named by ``host[:port]``.

    An exact ``host[:port]`` match wins; a bare host also matches the single upstream with
    that host name on a non-default port (so ``reg.example`` finds ``http://reg.example:5000``).
    """
    wanted = normalize_registry_host(hostport)
    for up in upstreams:
        if up.key == wanted:
            return up
    try:
        host, port = split_hostport(wanted)
    except ValueError:
        return None
    if port is None:
        same_host = [up for up in upstreams if up.host == host]
        if len(same_host) == 1:
            return same_host[0]
    return None


def choose_upstream(
    *,
    ns: str | None,
    host_header: str | None,
    upstreams: Sequence[Upstream],
    default: Upstream,
) -> Upstream:
    """Apply that order; raise 403 for a registry not in ``upstreams``."""
    if ns is not None:
        # containerd names the image's host in ns=; for a rewritten image (the webhook's
        # `.distributed.` name, routed here by hosts.toml) that host carries the label too.
        named = undistributed_host(ns) or ns
    elif host_header and (stripped := undistributed_host(host_header)) is not None:
        named = stripped
    else:
        return default
    found = match_upstream(named, upstreams)
    if found is None:
        raise RegistryError(
            403,
            "DENIED",
            f"registry {named!r} is not in this agent's upstreams; "
            "add it to POLLEN_UPSTREAMS to allow it",
        )
    return found
