"""Tests for agent/core/upstream.py: `Upstream` and the grammar of `upstreams` entries.

Pure: strings in, `Upstream` values or ValueError out; the key-level errors (which name
`upstreams` and POLLEN_UPSTREAMS) are tested through `load_config` in test_config.py.
"""

from __future__ import annotations

import pytest

from agent.core.upstream import (
    Upstream,
    parse_default_upstream,
    parse_upstream,
    parse_upstream_list,
)


@pytest.mark.parametrize(
    ("text", "want", "key", "base_url"),
    [
        ("registry.example.com", ("https", "registry.example.com", 443),
         "registry.example.com", "https://registry.example.com:443"),
        ("Registry.Example.COM:5000", ("https", "registry.example.com", 5000),
         "registry.example.com:5000", "https://registry.example.com:5000"),
        ("http://127.0.0.1:5000", ("http", "127.0.0.1", 5000),
         "127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://reg.example", ("http", "reg.example", 80), "reg.example", "http://reg.example:80"),
        ("HTTPS://reg.example/", ("https", "reg.example", 443), "reg.example",
         "https://reg.example:443"),
        ("https://reg.example:80", ("https", "reg.example", 80), "reg.example:80",
         "https://reg.example:80"),
        ("http://[::1]:5000", ("http", "::1", 5000), "[::1]:5000", "http://[::1]:5000"),
        ("[fd00::7]", ("https", "fd00::7", 443), "[fd00::7]", "https://[fd00::7]:443"),
        ("docker.io", ("https", "registry-1.docker.io", 443), "registry-1.docker.io",
         "https://registry-1.docker.io:443"),
        ("https://index.docker.io", ("https", "registry-1.docker.io", 443),
         "registry-1.docker.io", "https://registry-1.docker.io:443"),
        ("localhost:5000", ("https", "localhost", 5000), "localhost:5000",
         "https://localhost:5000"),
    ],
)  # fmt: skip
def test_parse_upstream(text: str, want: tuple[str, str, int], key: str, base_url: str) -> None:
    upstream = parse_upstream(text)
    assert (upstream.scheme, upstream.host, upstream.port) == want
    assert upstream.key == key
    assert upstream.base_url == base_url
    assert parse_upstream(str(upstream)) == upstream


@pytest.mark.parametrize(
    "text",
    [
        "", "ftp://reg.example", "https://", "reg.example/v2", "user@reg.example", "::1",
        "fd00::1:5000", "[::1", "[nothost]:5000", "reg.example:0", "reg.example:65536",
        "reg.example:http", "-bad.example", "reg_x.example", "300.1.1.1", "reg.example?x=1",
        "https://reg.example:5000/path",
    ],
)  # fmt: skip
def test_parse_upstream_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_upstream_validates_on_construction() -> None:
    with pytest.raises(ValueError):
        Upstream("ftp", "reg.example", 21)
    with pytest.raises(ValueError):
        Upstream("https", "Reg.Example", 443)
    with pytest.raises(ValueError):
        Upstream("https", "reg.example", 0)


def test_key_and_host_for_url_bracket_ipv6() -> None:
    v6 = Upstream("https", "fd00::7", 8443)
    assert (v6.host_for_url, v6.key, v6.base_url) == (
        "[fd00::7]",
        "[fd00::7]:8443",
        "https://[fd00::7]:8443",
    )
    assert str(v6) == "https://[fd00::7]:8443"
    assert Upstream("http", "10.0.0.1", 80).key == "10.0.0.1"


def test_parse_upstream_list() -> None:
    assert parse_upstream_list("a.example, http://[::1]:5000") == (
        Upstream("https", "a.example", 443),
        Upstream("http", "::1", 5000),
    )
    with pytest.raises(ValueError, match="name the same registry"):
        parse_upstream_list("docker.io,registry-1.docker.io")
    with pytest.raises(ValueError, match="at least one registry"):
        parse_upstream_list(" , ")
    with pytest.raises(ValueError, match="bad entry 'ftp://x.example'"):
        parse_upstream_list("a.example,ftp://x.example")


def test_parse_default_upstream() -> None:
    assert parse_default_upstream("") is None
    assert parse_default_upstream("docker.io") == Upstream("https", "registry-1.docker.io", 443)
    with pytest.raises(ValueError, match="bad entry"):
        parse_default_upstream("https://")
