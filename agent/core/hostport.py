"""The `host[:port]` grammar, in one place: split, join, check, normalize.

Theory of operation
-------------------
Pollen names endpoints as `host[:port]` everywhere: upstream registries (`upstreams`,
containerd's `ns=`), roots and peers (`roots`, P2P node ids), URLs and Host headers.  The one
trap is IPv6: a literal must be bracketed (`[fd00::5]:65002`), because `fd00::5000` could be
an address or an address and a port, and guessing would send traffic to the wrong place.

So there is one reader, `split_hostport`, which insists on the brackets and returns the bare
lower-case host, and one writer, `join_hostport`, which puts them back -- every module that
builds an address, a URL authority or a Host header calls it rather than writing the
brackets by hand.  `normalize_registry_host` maps Docker Hub's public names to the host that
serves its API.  `parse_roots` and `parse_host_patterns` are the parsers of the `roots` and
`webhook.registries` keys: lists in this grammar.

Standard library only; `ValueError("expected ..., got ...")` on bad input, as the other
parsers in `agent.core.values`.
"""

from __future__ import annotations

import ipaddress
import re

from agent.core.values import show_value, split_list

__all__ = [
    "DOCKER_HUB",
    "join_hostport",
    "normalize_registry_host",
    "parse_host_patterns",
    "parse_roots",
    "split_hostport",
]

_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _check_hostname(host: str, original: str) -> None:
    """Raise ValueError unless `host` (lower-case, no brackets) is a DNS name or an IP literal."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address in brackets, got {show_value(original)}"
            ) from None
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv4 address, got {show_value(original)}") from None
        return
    if len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"expected a host name, got {show_value(original)}")


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split `host`, `host:port`, `[v6]` or `[v6]:port` into (lower-case bare host, port or None).

    An IPv6 literal must be in brackets: `fd00::5000` could be an address or an address and a
    port, and guessing would send traffic to the wrong place.
    """
    text = text.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"expected host[:port], got {show_value(text)}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected host[:port], got {show_value(text)}")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address in brackets, got {show_value(text)}"
            ) from None
    elif text.count(":") > 1:
        raise ValueError(
            f"expected an IPv6 address in brackets like [::1]:5000, got {show_value(text)}"
        )
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        _check_hostname(host, text)
    if port_text is None:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 1..65535 in {show_value(text)}")
    return host, int(port_text)


def join_hostport(host: str, port: int | str | None = None) -> str:
    """Write `host[:port]` as a URL authority, a Host header or a node id: an IPv6 literal (any
    host with a colon) goes in brackets, so the result splits back unambiguously.

    `host` is bare (as `split_hostport` returns it, or as a socket address gives it); nothing
    is validated or lower-cased here, because callers join values that are already checked.
    `port` may be the text it was read as (KUBERNETES_SERVICE_PORT), written unchanged; None
    leaves the port out (the scheme's default applies).
    """
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


DOCKER_HUB = "registry-1.docker.io"
"""The host that serves Docker Hub's registry API."""

_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})


def normalize_registry_host(hostport: str) -> str:
    """Lower-case `host[:port]` and map Docker Hub's names (docker.io, index.docker.io) to the
    host that really serves its registry API, registry-1.docker.io.

    Image references and containerd's `ns=` say `docker.io`; the API lives elsewhere, so both
    `upstreams` and request matching go through here.  Text that is not `host[:port]` comes
    back stripped and lower-cased but otherwise unchanged: it is client input, and it will
    match no `Upstream.key` (those are always well-formed), which is the answer it deserves.
    """
    text = hostport.strip().lower()
    try:
        host, port = split_hostport(text)
    except ValueError:
        return text
    if host in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return join_hostport(host, port)


_PATTERN_RE = re.compile(r"(\*\.)?([a-z0-9.-]+)(:[0-9]{1,5})?")


def parse_host_patterns(value: object) -> tuple[str, ...]:
    """Host patterns like `*.cr.aliyuncs.com`, `registry.example.com` or `host:5000`; a `*`
    may only stand for whole leading labels, which is all the webhook needs and is easy to
    reason about."""
    result: list[str] = []
    for item in split_list(value):
        pattern = item.lower()
        m = _PATTERN_RE.fullmatch(pattern)
        port_ok = m is not None and (m.group(3) is None or 1 <= int(m.group(3)[1:]) <= 65535)
        if (
            m is None
            or not port_ok
            or not all(_LABEL_RE.fullmatch(x) for x in m.group(2).split("."))
        ):
            raise ValueError(
                f"expected host patterns like *.cr.aliyuncs.com, got {show_value(item)}"
            )
        result.append(pattern)
    return tuple(result)


def parse_roots(value: object) -> tuple[str, ...]:
    """The `roots` list: `host:port` entries, or one name without a port (`agent.core.config`
    fills it in from p2pPort once every key is parsed).  Several entries must all carry ports:
    a list of names without ports is more likely a mistake than a wish for one port everywhere.
    """
    items = split_list(value)
    result: list[str] = []
    for item in items:
        try:
            host, port = split_hostport(item)
        except ValueError as e:
            raise ValueError(f"bad entry {item!r}: {e}") from None
        if port is None and len(items) > 1:
            raise ValueError(
                f"bad entry {item!r}: a list of roots needs host:port entries; "
                "only a single DNS name may leave the port out"
            )
        result.append(join_hostport(host, port))
    if len(set(result)) != len(result):
        raise ValueError(f"duplicate entries in {show_value(value)}")
    return tuple(result)
