"""P2P host names (agent/core/p2pnames.py): the webhook's name for a registry and the registry
the agent reads back from it. Pure. Issue 13, item 3: a registry's own port used to be dropped,
so ``a.example.com:5000`` and ``a.example.com`` got one name and the agent chose port 443."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.p2pnames import is_p2p_name, p2p_host, undistributed_host


@pytest.mark.parametrize(
    ("registry", "name"),
    [
        # No port, or 443: exactly the names written before ports were kept.
        (
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001",
        ),
        ("docker.io", "docker.distributed.io:65001"),
        ("a.example.com:443", "a.distributed.example.com:65001"),
        # Any other port: in the marker, so the two registries get two names.
        ("a.cr.aliyuncs.com:5000", "a.distributed-5000.cr.aliyuncs.com:65001"),
        ("reg.pollen-test.internal:41234", "reg.distributed-41234.pollen-test.internal:65001"),
        ("a.b:1", "a.distributed-1.b:65001"),
        ("A.Example.COM:65535", "a.distributed-65535.example.com:65001"),
    ],
)
def test_the_name_and_back(registry: str, name: str) -> None:
    assert p2p_host(registry, 65001) == name
    back = registry.lower().removesuffix(":443")
    assert undistributed_host(name) == back


@pytest.mark.parametrize(
    "registry",
    [
        "localhost:5000",  # one label
        "127.0.0.1:5000",
        "[::1]:5000",
        "a.distributed.example.com",  # already a P2P name
        "a.distributed-5000.example.com:65001",
        "a_b.example.com",
        "a.example.com:0",
        "a.example.com:notaport",
        "x" * 60 + "." + ".".join(["y" * 60] * 3) + ":5000",  # too long once marked
    ],
)
def test_hosts_that_get_no_name(registry: str) -> None:
    assert p2p_host(registry, 65001) is None


@pytest.mark.parametrize(
    ("name", "registry"),
    [
        ("a.distributed-5000.b.c:65001", "a.b.c:5000"),
        ("a.b.distributed-5000.c", "a.b.c:5000"),  # not necessarily the second label
        ("a.distributed-5000.distributed.c", "a.distributed.c:5000"),  # the first marker only
        ("distributed-5000.distributed.b.c", "distributed-5000.b.c"),  # never the first label
        ("a.distributed-443.b", "a.b:443"),  # never written, but read as what it says
    ],
)
def test_reading_a_port_back(name: str, registry: str) -> None:
    assert undistributed_host(name) == registry


@pytest.mark.parametrize(
    "name",
    [
        "a.distributed-0.b",
        "a.distributed-65536.b",
        "a.distributed-05000.b",  # one spelling per port
        "a.distributed-.b",
        "a.distributed-50x.b",
        "a.distributed-5000",  # fewer than three labels
        "distributed-5000.a.b",
    ],
)
def test_not_a_marker(name: str) -> None:
    assert undistributed_host(name) is None


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    labels=st.lists(_label, min_size=2, max_size=5),
    port=st.none() | st.integers(1, 65535),
    endpoint=st.integers(1, 65535),
)
def test_every_registry_is_read_back_as_itself(
    labels: list[str], port: int | None, endpoint: int
) -> None:
    hostname = ".".join(labels)
    registry = hostname if port is None else f"{hostname}:{port}"
    name = p2p_host(registry, endpoint)
    if name is None:  # only hosts that already carry a marker, or all digits
        assert is_p2p_name(hostname) or hostname.replace(".", "").isdigit()
        return
    expected = hostname if port in (None, 443) else registry
    assert undistributed_host(name) == expected
    assert name.endswith(f":{endpoint}")
