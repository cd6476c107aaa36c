"""containerd's `hosts.toml` routes to the node's agent: which ones a node needs, their text,
and whether the ones it has send pulls through the agent. Pure (no I/O): `pollen doctor`
reads the files and `pollen doctor hosts` writes them.

A route is a directory under containerd's registry ``config_path`` named like the registry
host in image references (``host[:port]``, or ``_default`` for every registry, containerd
1.7 and newer) holding a ``hosts.toml`` whose ``[host."<agent>"]`` table has the ``pull`` and
``resolve`` capabilities. containerd then sends every request for that registry to the agent
first, naming the registry in ``?ns=``. A node needs:

- for each upstream matching ``webhook.registries``: its ``.distributed.`` name
  (``<first label>.distributed.<rest>:<endpointPort>``, ``distributed-<port>`` for an
  upstream on a port other than 443 -- what the webhook rewrites images to, and what the
  agent reads back, all from agent/core/p2pnames.py),
  whose name resolves nowhere, so that only the route makes it work;
- in mirror mode (no rewriting), each upstream's own name, or ``_default``.
The ``server`` line names the real registry, so a pull still works (from the origin) while
the agent is down.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.core.hostport import join_hostport
from agent.core.p2pnames import p2p_host
from agent.core.upstream import Upstream
from agent.kube.admission import host_matches

MARKER = "# Written by `pollen doctor hosts`"
DEFAULT_DIR = "_default"
CAPABILITIES = ("pull", "resolve")
_HUB_UPSTREAM = "registry-1.docker.io"
# Where containerd keeps the CRI registry settings: config version 2 (containerd 1.x) and
# version 3 (containerd 2.x).
CRI_REGISTRY_TABLES = (
    ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    ("plugins", "io.containerd.cri.v1.images", "registry"),
)


@dataclass(frozen=True)
class Route:
    """One hosts.toml: `name` is the directory (the registry host as images name it), `server`
    the real registry (fallback), `upstream` the configured registry it stands for, and
    `kind` 'distributed', 'mirror' or 'default'."""

    name: str
    server: str
    upstream: str
    kind: str


def image_host(upstream: Upstream) -> str:
    """How image references name an upstream: `docker.io` for Docker Hub."""
    return "docker.io" if upstream.host == _HUB_UPSTREAM else upstream.key


def wanted_routes(
    upstreams: Sequence[Upstream],
    registries: Sequence[str],
    endpoint_port: int,
    *,
    mirror: bool = False,
    default: bool = False,
) -> list[Route]:
    """The routes a node needs (see the module docstring)."""
    routes: list[Route] = []
    for up in upstreams:
        host = image_host(up)
        server = f"{up.scheme}://{up.key}"
        if host_matches(host, registries):
            name = p2p_host(host, endpoint_port)
            if name is not None:
                routes.append(Route(name, server, str(up), "distributed"))
        if mirror:
            routes.append(Route(host, server, str(up), "mirror"))
    if default:
        routes.append(Route(DEFAULT_DIR, "", "(every registry)", "default"))
    return routes


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hosts_toml(route: Route, agent_url: str) -> str:
    """The text of the route's hosts.toml, sending pulls to `agent_url` first."""
    lines = [
        f"{MARKER} for {route.upstream}: pulls go through the local Pollen agent",
        "# first, and to the registry itself when the agent does not answer.",
    ]
    if route.server:
        lines.append(f"server = {_toml_str(route.server)}")
    lines += [
        "",
        f"[host.{_toml_str(agent_url)}]",
        f"  capabilities = [{', '.join(_toml_str(c) for c in CAPABILITIES)}]",
        "",
    ]
    return "\n".join(lines)


def agent_url(proxy_port: int, *, tls: bool = False, host: str = "127.0.0.1") -> str:
    return f"{'https' if tls else 'http'}://{join_hostport(host, proxy_port)}"


def _same_endpoint(a: str, b: str) -> bool:
    """Do two URLs name the same agent? Loopback spellings count as one host."""
    pa, pb = urlsplit(a), urlsplit(b)
    loop = {"127.0.0.1", "localhost", "::1"}
    ha, hb = (pa.hostname or "").lower(), (pb.hostname or "").lower()
    same_host = ha == hb or (ha in loop and hb in loop)
    return pa.scheme == pb.scheme and same_host and pa.port == pb.port


def routes_to_agent(text: str, agent_urls: Iterable[str]) -> str | None:
    """None when this hosts.toml sends pulls to the agent first, else what is wrong."""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"containerd cannot parse it ({exc}) and ignores it"
    hosts = parsed.get("host")
    if not isinstance(hosts, dict) or not hosts:
        return 'it has no [host."..."] table, so containerd goes to the registry directly'
    urls = list(agent_urls)
    # containerd tries the hosts in file order; the first must be the agent.
    first_url, first = next(iter(hosts.items()))
    if not any(_same_endpoint(first_url, u) for u in urls):
        return f"its first host is {first_url}, not the agent ({urls[0]})"
    caps = first.get("capabilities", ["pull", "resolve", "push"]) if isinstance(first, dict) else []
    missing = [c for c in CAPABILITIES if c not in caps]
    if missing:
        return f"the agent's host lacks capabilities {', '.join(missing)}"
    return None


def cri_config_path(config: Mapping[str, Any]) -> str | None:
    """The CRI plugin's registry `config_path` from a parsed containerd config.toml."""
    for table in CRI_REGISTRY_TABLES:
        node: Any = config
        for part in table:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get("config_path"), str):
            if node["config_path"]:
                return node["config_path"]
    return None


def legacy_mirrors(config: Mapping[str, Any]) -> bool:
    """Whether the deprecated `registry.mirrors` table is set (it disables config_path)."""
    for table in CRI_REGISTRY_TABLES:
        node: Any = config
        for part in table:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("mirrors"):
            return True
    return False
