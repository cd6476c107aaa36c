"""containerd hosts.toml routes (agent/node/mirrors.py): which a node needs, their text, and the
check that a file sends pulls to the agent. Pure; containerd itself reads these files in
tests/integration/test_doctor.py."""

from __future__ import annotations

import tomllib

import pytest

from agent.core.upstream import parse_upstream
from agent.kube.admission import AdmissionSettings, rewrite_image
from agent.node.mirrors import (
    MARKER,
    Route,
    agent_url,
    cri_config_path,
    hosts_toml,
    legacy_mirrors,
    routes_to_agent,
    wanted_routes,
)

ACR = parse_upstream("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com")
HUB = parse_upstream("docker.io")
LOCAL = parse_upstream("http://reg.example.com:5000")
AGENT = "http://127.0.0.1:65001"


def test_distributed_routes_for_eligible_upstreams_only() -> None:
    routes = wanted_routes((ACR, HUB, LOCAL), ("*.cr.aliyuncs.com",), 65001)
    assert routes == [
        Route(
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001",
            "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "distributed",
        )
    ]


def test_a_route_for_a_registry_on_its_own_port() -> None:
    """The route's name is the webhook's image name (issue 13, item 3: the port survives)."""
    on_5000 = parse_upstream("a.cr.aliyuncs.com:5000")
    on_443 = parse_upstream("a.cr.aliyuncs.com")
    routes = wanted_routes((on_5000, on_443), ("*.cr.aliyuncs.com",), 65001)
    assert [(r.name, r.server) for r in routes] == [
        ("a.distributed-5000.cr.aliyuncs.com:65001", "https://a.cr.aliyuncs.com:5000"),
        ("a.distributed.cr.aliyuncs.com:65001", "https://a.cr.aliyuncs.com"),
    ]
    settings = AdmissionSettings(registries=("*.cr.aliyuncs.com",), endpoint_port=65001)
    for route, image in zip(
        routes, ["a.cr.aliyuncs.com:5000/t/app:v1", "a.cr.aliyuncs.com/t/app:v1"], strict=True
    ):
        assert rewrite_image(image, settings) == f"{route.name}/t/app:v1"


def test_mirror_and_default_routes() -> None:
    routes = wanted_routes((HUB, LOCAL), ("docker.io",), 65001, mirror=True, default=True)
    assert [(r.name, r.server, r.kind) for r in routes] == [
        ("docker.distributed.io:65001", "https://registry-1.docker.io", "distributed"),
        ("docker.io", "https://registry-1.docker.io", "mirror"),
        ("reg.example.com:5000", "http://reg.example.com:5000", "mirror"),
        ("_default", "", "default"),
    ]


def test_hosts_toml_text_parses_and_routes_to_the_agent() -> None:
    route = wanted_routes((ACR,), ("*.cr.aliyuncs.com",), 65001)[0]
    text = hosts_toml(route, AGENT)
    assert text.startswith(MARKER)
    parsed = tomllib.loads(text)
    assert parsed["server"] == "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
    assert parsed["host"] == {AGENT: {"capabilities": ["pull", "resolve"]}}
    assert routes_to_agent(text, [AGENT]) is None
    assert routes_to_agent(text, ["http://localhost:65001"]) is None  # loopback spellings
    assert "not the agent" in (routes_to_agent(text, ["http://127.0.0.1:65009"]) or "")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('server = "https://r"\n', "no [host"),
        ("[host", "cannot parse"),
        ('[host."http://127.0.0.1:65001"]\n  capabilities = ["pull"]\n', "resolve"),
        (
            '[host."https://mirror.example"]\n[host."http://127.0.0.1:65001"]\n',
            "first host is https://mirror.example",
        ),
        ('[host."https://127.0.0.1:65001"]\n', "not the agent"),  # scheme matters
    ],
)
def test_routes_to_agent_problems(text: str, problem: str) -> None:
    assert problem in (routes_to_agent(text, [AGENT]) or "")


def test_default_capabilities_include_pull_and_resolve() -> None:
    assert routes_to_agent('[host."http://127.0.0.1:65001"]\n', [AGENT]) is None


def test_cri_config_path_v2_and_v3() -> None:
    v2 = tomllib.loads(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        'config_path = "/etc/containerd/certs.d"\n'
    )
    v3 = tomllib.loads(
        'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/x"\n'
    )
    assert cri_config_path(v2) == "/etc/containerd/certs.d"
    assert cri_config_path(v3) == "/x"
    assert cri_config_path({}) is None
    assert (
        cri_config_path(tomllib.loads('[plugins."io.containerd.grpc.v1.cri".registry]\n')) is None
    )
    legacy = tomllib.loads(
        '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        'endpoint = ["http://127.0.0.1:65001"]\n'
    )
    assert legacy_mirrors(legacy) and not legacy_mirrors(v2)


def test_agent_url() -> None:
    assert agent_url(65001) == AGENT
    assert agent_url(8443, tls=True, host="::1") == "https://[::1]:8443"
