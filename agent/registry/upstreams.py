"""Which upstream registry serves a request, in the order of docs/ARCHITECTURE.md ("The proxy
port"), no I/O.

1. containerd's mirror parameter ``ns=<host[:port]>`` (a ``.distributed.`` name there counts
   as the registry it stands for);
2. a Host header carrying the label ``distributed`` (the webhook's rewritten image names;
   ``distributed-<port>`` names the registry's port, agent/core/p2pnames.py);
3. ``defaultUpstream``.
The result must be one of ``upstreams``: anything else is refused with 403, so the agent is
never an open proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.core.errors import RegistryError
from agent.core.hostport import normalize_registry_host, split_hostport
from agent.core.p2pnames import undistributed_host
from agent.core.upstream import Upstream

__all__ = ["choose_upstream", "match_upstream", "undistributed_host"]


def match_upstream(hostport: str, upstreams: Sequence[Upstream]) -> Upstream | None:
    """Find the configured upstream a client named by ``host[:port]``.

    An exact ``host[:port]`` match wins; then host and port against each upstream's explicit
    port (``reg.example:443`` finds ``https://reg.example``); a bare host also matches the
    single upstream with that host name on a non-default port (so ``reg.example`` finds
    ``http://reg.example:5000``).
    """
    wanted = normalize_registry_host(hostport)
    for up in upstreams:
        if up.key == wanted:
            return up
    try:
        host, port = split_hostport(wanted)
    except ValueError:
        return None
    if port is not None:
        same = [up for up in upstreams if (up.host, up.port) == (host, port)]
    else:
        same = [up for up in upstreams if up.host == host]
    return same[0] if len(same) == 1 else None


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
