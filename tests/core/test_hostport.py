"""Tests for agent/core/hostport.py: the one reader and the one writer of `host[:port]`.

Pure: strings in, strings or ValueError out.  The property that matters most is that
`join_hostport` writes what `split_hostport` reads back, IPv6 literals bracketed.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.hostport import (
    DOCKER_HUB,
    join_hostport,
    normalize_registry_host,
    parse_host_patterns,
    parse_roots,
    split_hostport,
)

# --- split ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("reg.example", ("reg.example", None)),
        ("reg.example:5000", ("reg.example", 5000)),
        ("[::1]", ("::1", None)),
        ("[::1]:65002", ("::1", 65002)),
        ("10.0.0.1:65002", ("10.0.0.1", 65002)),
    ],
)
def test_split_hostport(text: str, want: tuple[str, int | None]) -> None:
    assert split_hostport(text) == want


@pytest.mark.parametrize(
    "text",
    ["::1", "fd00::1:5000", "[::1", "[::1]x", "[nothost]:5000", "reg.example:0",
     "reg.example:65536", "reg.example:http", "-bad.example", "reg_x.example", "300.1.1.1", ""],
)  # fmt: skip
def test_split_hostport_bad(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        split_hostport(text)


def test_split_hostport_lower_cases_and_strips() -> None:
    assert split_hostport(" Reg.Example:5000 ") == ("reg.example", 5000)
    assert split_hostport("[FD00::A]") == ("fd00::a", None)


# --- join -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "want"),
    [
        ("10.0.0.1", 65002, "10.0.0.1:65002"),
        ("10.0.0.1", None, "10.0.0.1"),
        ("::1", 5000, "[::1]:5000"),
        ("fd00::12", None, "[fd00::12]"),
        ("::ffff:10.0.0.1", 443, "[::ffff:10.0.0.1]:443"),
        ("registry.example.com", 443, "registry.example.com:443"),
        ("registry.example.com", None, "registry.example.com"),
        ("localhost", 0, "localhost:0"),  # 0 is a port (the OS picks), not "no port"
        ("10.96.0.1", "443", "10.96.0.1:443"),  # as read from KUBERNETES_SERVICE_PORT
    ],
)
def test_join_hostport(host: str, port: int | str | None, want: str) -> None:
    assert join_hostport(host, port) == want


def test_join_hostport_port_defaults_to_none() -> None:
    assert join_hostport("fd00::7") == "[fd00::7]"
    assert join_hostport("reg.example") == "reg.example"


_DNS_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
_HOSTS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.lists(_DNS_LABEL, min_size=1, max_size=4).map(".".join),
)


@given(_HOSTS, st.one_of(st.none(), st.integers(min_value=1, max_value=65535)))
def test_join_then_split_round_trips(host: str, port: int | None) -> None:
    assert split_hostport(join_hostport(host, port)) == (host, port)


@given(st.ip_addresses(v=6), st.integers(min_value=1, max_value=65535))
def test_joined_ipv6_is_always_bracketed(address: ipaddress.IPv6Address, port: int) -> None:
    text = join_hostport(str(address), port)
    assert text.startswith("[") and text.endswith(f"]:{port}")


# --- Docker Hub, roots, patterns --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("docker.io", "registry-1.docker.io"),
        ("INDEX.DOCKER.IO", "registry-1.docker.io"),
        ("docker.io:443", "registry-1.docker.io:443"),
        ("Reg.Example:5000", "reg.example:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("registry-1.docker.io", "registry-1.docker.io"),
        (" not a host ", "not a host"),  # unparseable: lower-cased, matches no key
    ],
)
def test_normalize_registry_host(text: str, want: str) -> None:
    assert normalize_registry_host(text) == want


def test_docker_hub_is_the_api_host() -> None:
    assert normalize_registry_host("docker.io") == DOCKER_HUB == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("10.0.0.11:65002, [FD00::12]:65002", ("10.0.0.11:65002", "[fd00::12]:65002")),
        ("Pollen-Root.pollen.svc", ("pollen-root.pollen.svc",)),  # the port comes later
        ("[fd00::1]", ("[fd00::1]",)),
        (["r1.example:1", "r2.example:2"], ("r1.example:1", "r2.example:2")),
        ("", ()),
    ],
)
def test_parse_roots_good(value: object, want: tuple[str, ...]) -> None:
    assert parse_roots(value) == want


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("a.example,b.example:1", "a list of roots needs host:port"),
        ("10.0.0.1:65002,10.0.0.1:65002", "duplicate"),
        ("a.example:99999", "bad entry"),
        ("fd00::1:65002", "in brackets"),
    ],
)
def test_parse_roots_bad(value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_roots(value)


def test_parse_host_patterns() -> None:
    got = parse_host_patterns("*.CR.aliyuncs.com, reg.example:5000,")
    assert got == ("*.cr.aliyuncs.com", "reg.example:5000")
    for bad in ("*bad*", "a.*.example", "reg.example:70000", "-x.example"):
        with pytest.raises(ValueError, match="host patterns"):
            parse_host_patterns(bad)
