"""Tests for agent/registry/upstreams.py: which upstream serves a request, in the documented order.

Pure: Upstreams come from agent.core.upstream.parse_upstream, requests are plain strings.
"""

from __future__ import annotations

import pytest

from agent.core.errors import RegistryError
from agent.core.upstream import Upstream, parse_upstream
from agent.registry.upstreams import choose_upstream, match_upstream, undistributed_host

HUB = parse_upstream("docker.io")
LOCAL = parse_upstream("http://127.0.0.1:5000")
ACR = parse_upstream("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com")
ODD_PORT = parse_upstream("reg.example:5000")
PLAIN = parse_upstream("http://plain.example")
DUP_A = parse_upstream("https://dup.example:5000")
DUP_B = parse_upstream("http://dup.example:6000")
V6 = parse_upstream("http://[fd00::1]:5000")
UPSTREAMS = (HUB, LOCAL, ACR, ODD_PORT, PLAIN, DUP_A, DUP_B, V6)


def test_fixture_upstreams() -> None:
    assert HUB == Upstream("https", "registry-1.docker.io", 443)
    assert LOCAL == Upstream("http", "127.0.0.1", 5000)
    assert PLAIN == Upstream("http", "plain.example", 80)


# --------------------------------------------------------------------------------------------
# undistributed_host


@pytest.mark.parametrize(
    ("host_header", "stripped"),
    [
        (
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001",
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        ),
        (
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com",
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        ),
        ("a.distributed.c", "a.c"),  # three labels: the minimum
        ("a.distributed.c:1", "a.c"),
        ("A.DISTRIBUTED.Example.COM:65001", "a.example.com"),  # lower-cased
        ("a.b.distributed.c", "a.b.c"),  # not necessarily the second label
        ("a.distributed.distributed.c", "a.distributed.c"),  # only one label is removed
        ("distributed.distributed.a.b", "distributed.a.b"),  # the registry host's first label
        ("distributed.x.distributed.b:65001", "distributed.x.b"),  # ...is never the one removed
        ("a.distributed-5000.b.c:65001", "a.b.c:5000"),  # the registry's port, in the marker
    ],
)
def test_undistributed_host(host_header: str, stripped: str) -> None:
    assert undistributed_host(host_header) == stripped


@pytest.mark.parametrize(
    "host_header",
    [
        "a.b.c",  # no such label
        "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com:65001",
        "localhost:65001",
        "127.0.0.1:65001",
        "[::1]:65001",
        "a.distributed",  # fewer than three labels
        "a.distributed:65001",
        "distributed",
        "distributed.a.b",  # as the first label it names the registry host itself
        "distributed.a.b:65001",
        "a.distributedx.b",  # whole labels only
        "a.xdistributed.b",
        "a.distributed-b.c",
        "",
        ":65001",
        "a.distributed.b:notaport",
        "a b.distributed.c",
    ],
)
def test_not_distributed(host_header: str) -> None:
    assert undistributed_host(host_header) is None


# --------------------------------------------------------------------------------------------
# match_upstream


@pytest.mark.parametrize(
    ("named", "upstream"),
    [
        # exact key
        ("registry-1.docker.io", HUB),
        ("127.0.0.1:5000", LOCAL),
        ("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com", ACR),
        ("reg.example:5000", ODD_PORT),
        ("plain.example", PLAIN),
        ("dup.example:5000", DUP_A),
        ("dup.example:6000", DUP_B),
        ("[fd00::1]:5000", V6),
        ("  REG.Example:5000 ", ODD_PORT),  # case and space do not matter
        # Docker Hub's names
        ("docker.io", HUB),
        ("index.docker.io", HUB),
        ("Docker.IO", HUB),
        # a bare host finds the single upstream of that host on a non-default port
        ("127.0.0.1", LOCAL),
        ("reg.example", ODD_PORT),
        ("[fd00::1]", V6),
        # a port that is the upstream's explicit one, though its key leaves it out
        ("plain.example:80", PLAIN),
        ("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com:443", ACR),
    ],
)
def test_match_upstream(named: str, upstream: Upstream) -> None:
    assert match_upstream(named, UPSTREAMS) == upstream


@pytest.mark.parametrize(
    "named",
    [
        "dup.example",  # two upstreams on that host: ambiguous
        "dup.example:7000",
        "reg.example:5001",  # a port names exactly one registry
        "127.0.0.1:5001",
        "127.0.0.2:5000",
        "unknown.example",
        "registry-1.docker.io:5000",
        "docker.io.evil.example",
        "evil.example/registry-1.docker.io",
        "registry-1.docker.io@evil.example",
        "fd00::1",  # an IPv6 literal must be in brackets
        "",
        "not a host",
    ],
)
def test_no_match(named: str) -> None:
    assert match_upstream(named, UPSTREAMS) is None


def test_exact_key_beats_bare_host_match() -> None:
    default_port = parse_upstream("http://reg.example")  # key "reg.example"
    odd_port = parse_upstream("https://reg.example:5000")
    assert match_upstream("reg.example", (odd_port, default_port)) == default_port
    assert match_upstream("reg.example", (default_port, odd_port)) == default_port


def test_a_registry_on_its_own_port_next_to_the_same_host_on_443() -> None:
    """Issue 13, item 3: the webhook's name for `a.cr.aliyuncs.com:5000` images carried no
    port, so the agent sent their pulls to `a.cr.aliyuncs.com` (443), another registry."""
    on_443 = parse_upstream("a.cr.aliyuncs.com")
    on_5000 = parse_upstream("a.cr.aliyuncs.com:5000")
    both = (on_443, on_5000)
    for ns, host in [
        ("a.distributed-5000.cr.aliyuncs.com:65001", None),  # containerd, through hosts.toml
        (None, "a.distributed-5000.cr.aliyuncs.com:65001"),  # a client resolving the name
    ]:
        assert choose_upstream(ns=ns, host_header=host, upstreams=both, default=on_443) == on_5000
    for ns, host in [
        ("a.distributed.cr.aliyuncs.com:65001", None),
        (None, "a.distributed.cr.aliyuncs.com"),
    ]:
        assert choose_upstream(ns=ns, host_header=host, upstreams=both, default=on_5000) == on_443


def test_no_upstreams() -> None:
    assert match_upstream("docker.io", ()) is None


# --------------------------------------------------------------------------------------------
# choose_upstream

DISTRIBUTED_ACR = "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001"


@pytest.mark.parametrize(
    ("ns", "host_header", "upstream"),
    [
        # ns= beats the Host header, which beats the default
        ("127.0.0.1:5000", DISTRIBUTED_ACR, LOCAL),
        ("docker.io", DISTRIBUTED_ACR, HUB),
        # a rewritten image routed by hosts.toml: containerd passes its name as ns=
        (DISTRIBUTED_ACR, "127.0.0.1:65001", ACR),
        ("reg.distributed.example:65001", None, ODD_PORT),
        (None, DISTRIBUTED_ACR, ACR),
        (None, "reg.distributed.example:65001", ODD_PORT),  # bare host match after stripping
        (None, "127.0.0.1:65001", PLAIN),  # a Host without the label: default
        (None, "localhost", PLAIN),
        (None, "", PLAIN),
        (None, None, PLAIN),
    ],
)
def test_choose_upstream(ns: str | None, host_header: str | None, upstream: Upstream) -> None:
    chosen = choose_upstream(ns=ns, host_header=host_header, upstreams=UPSTREAMS, default=PLAIN)
    assert chosen == upstream


@pytest.mark.parametrize(
    ("ns", "host_header", "named"),
    [
        ("evil.example", None, "evil.example"),
        # a refused ns= does not fall back to the Host header or the default
        ("evil.example:5000", DISTRIBUTED_ACR, "evil.example:5000"),
        ("dup.example", None, "dup.example"),
        (None, "registry.distributed.evil.example:65001", "registry.evil.example"),
        (None, "a.distributed.b.c", "a.b.c"),
        (None, "reg.distributed-5001.example:65001", "reg.example:5001"),  # the port counts
        ("dup.distributed-7000.example:65001", None, "dup.example:7000"),
        ("registry.distributed.evil.example:65001", None, "registry.evil.example"),
    ],
)
def test_unknown_registry_is_403(ns: str | None, host_header: str | None, named: str) -> None:
    with pytest.raises(RegistryError) as info:
        choose_upstream(ns=ns, host_header=host_header, upstreams=UPSTREAMS, default=PLAIN)
    err = info.value
    assert err.status == 403
    assert err.code == "DENIED"
    assert named in err.message
    assert named in err.body().decode()


def test_default_need_not_be_looked_up() -> None:
    # The default comes from Config, which already checked it is one of upstreams.
    assert choose_upstream(ns=None, host_header=None, upstreams=(), default=HUB) == HUB
