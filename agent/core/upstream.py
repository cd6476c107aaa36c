"""The registries the agent may contact: `Upstream` and the grammar of `upstreams` entries.

Theory of operation
-------------------
An upstream is written `host[:port]` (https), `https://host[:port]` or `http://host[:port]`,
bracketed IPv6 allowed, Docker Hub's public names normalized to the host that serves its API.
`parse_upstream` reads one entry into an `Upstream`, which keeps the port explicit but knows
its `key` -- `host[:port]` with the port only when it is not the scheme's default -- because
that is how clients name a registry (containerd's `ns=`, image references), so it is what
requests are matched against.  `parse_upstream_list` and `parse_default_upstream` are the
parsers of the `upstreams` and `defaultUpstream` keys in `agent.core.config.KEYS`.

Most of the agent (the registry client, the fetchers, the swarm, containerd routes) needs an
`Upstream` and never a `Config`, which is why this is its own module.  Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.hostport import join_hostport, normalize_registry_host, split_hostport
from agent.core.values import parse_string, show_value, split_list

__all__ = ["Upstream", "parse_default_upstream", "parse_upstream", "parse_upstream_list"]


_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class Upstream:
    """One registry the agent may contact, as written in `upstreams`.

    `host` is lower-case and bare (an IPv6 literal has no brackets); `port` is always
    explicit.  Requests name a registry by `host[:port]` (containerd's `ns=`), so `key` --
    the port only when it is not the scheme's default -- is what they are matched against.
    """

    scheme: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"scheme must be http or https, got {self.scheme!r}")
        if not self.host or self.host != self.host.lower():
            raise ValueError(f"host must be non-empty and lower-case, got {self.host!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port!r}")

    @property
    def host_for_url(self) -> str:
        """The host as it appears in a URL or Host header: IPv6 literals in brackets."""
        return join_hostport(self.host)

    @property
    def default_port(self) -> bool:
        """True when `port` is the scheme's default (443 for https, 80 for http)."""
        return self.port == _DEFAULT_PORTS[self.scheme]

    @property
    def key(self) -> str:
        """`host` or `host:port` (port only when not the scheme default), as clients name it."""
        return join_hostport(self.host, None if self.default_port else self.port)

    @property
    def base_url(self) -> str:
        """`scheme://host:port` with the port always present, for the HTTP client."""
        return f"{self.scheme}://{join_hostport(self.host, self.port)}"

    def __str__(self) -> str:
        """The entry as a user would write it in `upstreams` (parses back to an equal value)."""
        return f"{self.scheme}://{self.key}"


def parse_upstream(text: str) -> Upstream:
    """Parse one `upstreams` entry: `host[:port]` (https), `https://host[:port]` or
    `http://host[:port]`; bracketed IPv6 allowed; Docker Hub names normalized."""
    original = text
    text = text.strip()
    scheme = "https"
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"expected an http:// or https:// registry, got {show_value(original)}"
            )
    if text.endswith("/"):
        text = text[:-1]
    if not text or any(c in text for c in "/?#@ \t"):
        raise ValueError(f"expected host[:port] with no path, got {show_value(original)}")
    host, port = split_hostport(normalize_registry_host(text))
    return Upstream(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


def parse_upstream_list(value: object) -> tuple[Upstream, ...]:
    """The `upstreams` list: at least one entry, no two naming the same registry."""
    result: list[Upstream] = []
    seen: dict[str, str] = {}
    for item in split_list(value):
        try:
            upstream = parse_upstream(item)
        except ValueError as e:
            raise ValueError(f"bad entry {item!r}: {e}") from None
        if upstream.key in seen:
            raise ValueError(f"entries {seen[upstream.key]!r} and {item!r} name the same registry")
        seen[upstream.key] = item
        result.append(upstream)
    if not result:
        raise ValueError("expected at least one registry, got none")
    return tuple(result)


def parse_default_upstream(value: object) -> Upstream | None:
    """One upstreams-style entry, or None (empty) for "the first of upstreams"."""
    text = parse_string(value).strip()
    if not text:
        return None
    try:
        return parse_upstream(text)
    except ValueError as e:
        raise ValueError(f"bad entry {text!r}: {e}") from None
