"""`pollen doctor` against a real containerd (CRI and ctr), a real agent and a real registry,
with and without the mirror configured, including real canary pulls through the runtime; and
`pollen doctor hosts` writing the routes that a pull of a webhook-rewritten image takes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Containerd,
    Image,
    Registry,
    blob_gets,
    etc_hosts_entry,
    push_image,
)

from agent.core.config import load_config
from agent.kube.admission import rewrite_image
from agent.kube.webhook import settings_from

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_NAME = "reg.pollen-test.internal"


def distributed_name(registry_port: int) -> str:
    """The webhook's name for images of `reg.pollen-test.internal:<registry_port>` (the port
    in the marker label, agent/core/p2pnames.py), without the agent's port."""
    return f"reg.distributed-{registry_port}.pollen-test.internal"


@dataclass
class Node:
    registry: Registry
    agent: AgentProcess
    containerd: Containerd
    env: dict[str, str]

    @property
    def distributed(self) -> str:
        return f"{distributed_name(self.registry.port)}:{self.agent.port}"

    def pollen(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=REPO_ROOT,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", **self.env},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def doctor(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.pollen(
            "doctor",
            "--containerd-config",
            str(self.containerd.workdir / "config.toml"),
            "--containerd-socket",
            str(self.containerd.socket),
            *args,
        )


@pytest.fixture
def node(
    registry: Registry,
    small_image: Image,
    containerd: Containerd,
    make_agent: Callable[..., AgentProcess],
) -> Iterator[Node]:
    """A registry known by a DNS name (so it has a `.distributed.` form), an agent allowed to
    reach it, and containerd reading hosts.toml from its certs.d (config_path)."""
    push_image(small_image, registry, "team/app", "v1")
    # The rewritten name resolves to a loopback address where nothing listens, so a runtime
    # that bypasses the agent fails there, with no DNS query leaving the machine.
    with (
        etc_hosts_entry(REGISTRY_NAME),
        etc_hosts_entry(distributed_name(registry.port), "127.0.0.2"),
    ):
        upstream = f"http://{REGISTRY_NAME}:{registry.port}"
        agent = make_agent(upstreams=upstream, start=False)
        settings = {
            "POLLEN_WEBHOOK_REGISTRIES": "*.pollen-test.internal",
            "POLLEN_WEBHOOK_ENDPOINT_PORT": str(agent.port),
        }
        agent.env.update(settings)
        agent.start()
        env = {
            "POLLEN_UPSTREAMS": upstream,
            "POLLEN_PROXY_PORT": str(agent.port),
            **settings,
        }
        yield Node(registry, agent, containerd, env)


def test_doctor_with_the_mirror_configured(node: Node, small_image: Image) -> None:
    wrote = node.pollen("doctor", "hosts", "--dir", str(node.containerd.certs_dir))
    assert wrote.returncode == 0, wrote.stderr
    hosts = node.containerd.certs_dir / node.distributed / "hosts.toml"
    assert f"wrote {hosts}" in wrote.stdout
    assert f'[host."http://127.0.0.1:{node.agent.port}"]' in hosts.read_text()

    for via in ("cri", "ctr"):
        done = node.doctor("--via", via)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[FAIL]" not in done.stdout
        assert f"[ok] {node.distributed}: a canary pull through containerd" in done.stdout
        assert "all good" in done.stdout
    canaries = [
        line for line in node.agent.log_text().splitlines() if "pollen-doctor/canary" in line
    ]
    assert canaries, "the agent never logged the canary"

    # What the doctor vouched for works: the webhook's rewritten name pulls through the agent.
    image = f"{node.distributed}/team/app:v1"
    assert webhook_rewrite(node, f"{REGISTRY_NAME}:{node.registry.port}/team/app:v1") == image
    assert node.containerd.cri_pull(image)
    assert set(small_image.layer_digests) <= node.containerd.content_digests("k8s.io")
    assert all(n == 1 for n in blob_gets(node.registry, small_image).values())

    # Writing again changes nothing; a file pollen did not write is kept.
    again = node.pollen("doctor", "hosts", "--dir", str(node.containerd.certs_dir))
    assert f"unchanged {hosts}" in again.stdout


def webhook_rewrite(node: Node, image: str) -> str | None:
    """What the webhook, configured as this node is, rewrites `image` to."""
    config = load_config(node.env)
    return rewrite_image(image, settings_from(config, "pollen-system"))


def test_a_registry_on_its_own_port_next_to_the_same_host_on_443(
    registry: Registry,
    small_image: Image,
    containerd: Containerd,
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Issue 13, item 3, with real processes: the agent may reach `reg...:<port>` (the real
    registry) and `reg...` on 443 (nothing there). The webhook's name for an image of the
    first, routed by `pollen doctor hosts`, is pulled by containerd through the agent from
    the first. (The port used to be dropped: both got one name, and the agent chose 443.)"""
    push_image(small_image, registry, "team/app", "v1")
    on_port = f"http://{REGISTRY_NAME}:{registry.port}"
    with (
        etc_hosts_entry(REGISTRY_NAME),
        etc_hosts_entry(distributed_name(registry.port), "127.0.0.2"),
        etc_hosts_entry("reg.distributed.pollen-test.internal", "127.0.0.2"),
    ):
        upstreams = f"{on_port},https://{REGISTRY_NAME}"
        agent = make_agent(upstreams=upstreams, start=False)
        settings = {
            "POLLEN_WEBHOOK_REGISTRIES": "*.pollen-test.internal",
            "POLLEN_WEBHOOK_ENDPOINT_PORT": str(agent.port),
        }
        agent.env.update(settings)
        agent.start()
        env = {"POLLEN_UPSTREAMS": upstreams, "POLLEN_PROXY_PORT": str(agent.port), **settings}
        node = Node(registry, agent, containerd, env)
        wrote = node.pollen("doctor", "hosts", "--dir", str(containerd.certs_dir))
        assert wrote.returncode == 0, wrote.stderr
        routes = sorted(p.name for p in containerd.certs_dir.iterdir())
        assert routes == sorted(
            [node.distributed, f"reg.distributed.pollen-test.internal:{agent.port}"]
        )
        image = webhook_rewrite(node, f"{REGISTRY_NAME}:{registry.port}/team/app:v1")
        assert image == f"{node.distributed}/team/app:v1"
        assert containerd.cri_pull(image)
    assert set(small_image.layer_digests) <= containerd.content_digests("k8s.io")
    assert all(n == 1 for n in blob_gets(registry, small_image).values())


def test_doctor_without_the_mirror(node: Node) -> None:
    done = node.doctor()
    assert done.returncode == 1
    out = done.stdout
    assert f"[FAIL] {node.distributed}: no " in out
    assert "fix: run `pollen doctor hosts --dir" in out
    assert "never reached the agent: the runtime bypasses it" in out
    assert "[ok] the agent at" in out
    assert "problem(s)" in out


def test_doctor_sees_a_runtime_that_bypasses_correct_files(node: Node, tmp_path: Path) -> None:
    """The files are right but containerd reads another directory: only the canary shows it."""
    elsewhere = tmp_path / "certs.d"
    node.pollen("doctor", "hosts", "--dir", str(elsewhere))
    done = node.doctor("--hosts-dir", str(elsewhere))
    assert done.returncode == 1
    assert f"[ok] {node.distributed}: {elsewhere}" in done.stdout
    assert "[FAIL]" in done.stdout and "bypasses it" in done.stdout


def test_doctor_names_a_mirror_that_is_not_the_agent(node: Node) -> None:
    node.containerd.write_hosts_toml(
        node.distributed, f"http://{REGISTRY_NAME}:{node.registry.port}", "http://127.0.0.1:9"
    )
    done = node.doctor("--no-canary")
    assert done.returncode == 1
    assert "its first host is http://127.0.0.1:9, not the agent" in done.stdout


def test_doctor_without_config_path(node: Node, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n')
    done = node.pollen("doctor", "--containerd-config", str(config), "--no-canary")
    assert done.returncode == 1
    assert "sets no CRI registry config_path" in done.stdout
    assert 'config_path = "/etc/containerd/certs.d"' in done.stdout


def test_doctor_when_the_agent_is_down(node: Node) -> None:
    node.pollen("doctor", "hosts", "--dir", str(node.containerd.certs_dir))
    node.agent.stop()
    done = node.doctor()
    assert done.returncode == 1
    assert "[FAIL] no agent answers at" in done.stdout
    assert "canary" not in done.stdout  # nothing to count it at
