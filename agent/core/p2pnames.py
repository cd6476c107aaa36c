"""P2P host names: the name the webhook gives a registry's images, and the registry the agent
reads back from it. One home for both directions, because the webhook (rewritten images and
their pull secrets), `pollen doctor hosts` (containerd's routes) and the agent (which upstream
serves a request) must agree on every byte.

Theory of operation
-------------------
A registry ``a.b.c`` becomes ``a.distributed.b.c:<endpointPort>``: the port is the node
agent's, so the registry's own port cannot stay where it was. It goes into the marker label
instead -- ``a.b.c:5000`` becomes ``a.distributed-5000.b.c:<endpointPort>`` -- so that
``a.b.c:5000`` and ``a.b.c`` (which may be two registries) get two names, and the agent, the
kubelet (which finds credentials by host and port) and containerd's hosts.toml directories
tell them apart. A registry named without a port, or with 443 (the same registry to an HTTPS
client), keeps the plain ``distributed`` label: those names are unchanged from before ports
were kept.

`p2p_host` writes a name and `undistributed_host` reads one back: ``undistributed_host(
p2p_host(h, p))`` is ``h`` (443 read back as no port). The marker is the first label after
the first that is ``distributed`` or ``distributed-<port>`` (a port 1-65535, no leading
zero); the registry's own first label is never taken for it. Names of fewer than three labels
carry no marker. Standard library only.
"""

from __future__ import annotations

import re

from agent.core.hostport import join_hostport, split_hostport

__all__ = ["DISTRIBUTED_LABEL", "is_p2p_name", "p2p_host", "undistributed_host"]

DISTRIBUTED_LABEL = "distributed"
_HTTPS_PORT = 443
_MAX_NAME = 253
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MARKER_RE = re.compile(rf"{DISTRIBUTED_LABEL}(?:-([1-9][0-9]{{0,4}}))?")


def _marker_port(label: str) -> tuple[bool, int | None]:
    """(is it a marker label, the registry port it carries or None)."""
    m = _MARKER_RE.fullmatch(label)
    if m is None:
        return False, None
    if m.group(1) is None:
        return True, None
    port = int(m.group(1))
    return (True, port) if port <= 65535 else (False, None)


def _marker_index(labels: list[str]) -> int | None:
    """Where the marker is among a name's labels (never the first), or None."""
    for i, label in enumerate(labels[1:], start=1):
        if _marker_port(label)[0]:
            return i
    return None


def is_p2p_name(hostname: str) -> bool:
    """True for a host name (no port) that carries a marker, i.e. one the webhook wrote."""
    return _marker_index(hostname.lower().split(".")) is not None


def p2p_host(host: str, endpoint_port: int) -> str | None:
    """``a.b.c[:port]`` -> ``a.distributed[-port].b.c:<endpoint_port>``; None when the host
    cannot carry the marker (an IP literal, a single label, a name that already carries one,
    or a result longer than a DNS name may be)."""
    try:
        hostname, port = split_hostport(host)
    except ValueError:
        return None
    labels = hostname.split(".")
    if len(labels) < 2 or re.fullmatch(r"[0-9.]+", hostname) or is_p2p_name(hostname):
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    marker = DISTRIBUTED_LABEL
    if port is not None and port != _HTTPS_PORT:
        marker = f"{DISTRIBUTED_LABEL}-{port}"
    name = ".".join([labels[0], marker, *labels[1:]])
    if len(name) > _MAX_NAME:
        return None
    return f"{name}:{endpoint_port}"


def undistributed_host(name: str) -> str | None:
    """``a.distributed[-port].b.c[:agent port]`` -> ``a.b.c[:port]``, the registry it stands
    for; None when the name carries no marker. The agent's own port is dropped."""
    try:
        host, _agent_port = split_hostport(name)
    except ValueError:
        return None
    labels = host.rstrip(".").split(".")
    if len(labels) < 3:
        return None
    idx = _marker_index(labels)
    if idx is None:
        return None
    _, port = _marker_port(labels[idx])
    return join_hostport(".".join(labels[:idx] + labels[idx + 1 :]), port)
