"""`pollen preheat` against real processes: a docker-registry origin, roots and agents on their
own loopback addresses, `pollen preheat` run as a subprocess with a node's configuration, and
skopeo pulling through the agents afterwards.

What the registry sent is counted in its own access log: after a preheat, a pull through any
agent makes no blob GET there at all -- the owning roots hold every layer and config blob.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from harness import (
    Account,
    AgentProcess,
    IndexImage,
    Registry,
    TokenIssuer,
    agent_status,
    build_image,
    build_index_image,
    free_port,
    make_ca_and_cert,
    push_image,
    skopeo_copy_to_dir,
    verify_dir_blobs,
    write_authfile,
)
from harness.images import host_arch
from harness.procs import clean_env
from test_root_tiers import start_groups
from test_swarm_cluster import Cluster, owner_of, pull_all

MiB = 1 << 20
REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_PLATFORM = f"linux/{host_arch()}"
OTHER_PLATFORM = "linux/arm64" if host_arch() != "arm64" else "linux/amd64"


def preheat(
    node_env: Mapping[str, str], *args: str, home: Path, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`pollen preheat ARGS` with exactly a node's POLLEN_* configuration (and no credential
    file of the caller's); the process and how long it took."""
    env = clean_env(
        {**node_env, "PYTHONPATH": str(REPO_ROOT), "HOME": str(home)},
        drop_prefixes=("POLLEN_", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_RUNTIME_DIR"),
    )
    env.update(node_env)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "preheat", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


def blob_gets(registry: Registry, digests: set[str], since: int = 0) -> dict[str, int]:
    registry.sync_log()
    return {d: registry.blob_get_count(d, since=since, sync=False) for d in sorted(digests)}


def two_platform_image(tmp_path: Path) -> IndexImage:
    """This machine's platform and one other, three layers each, none shared."""
    host = build_image(tmp_path / "host", (3 * MiB, 2 * MiB, 512 * 1024), seed=61)
    other = build_image(
        tmp_path / "other", (MiB, 256 * 1024), seed=62, architecture=OTHER_PLATFORM[6:]
    )
    return build_index_image(tmp_path, [(HOST_PLATFORM, host), (OTHER_PLATFORM, other)], tag="v1")


def test_preheat_makes_every_later_pull_cost_the_registry_no_blob_get(
    tmp_path: Path,
    registry: Registry,
    make_agent: Callable[..., AgentProcess],
) -> None:
    """A two-platform image, two roots, two agents. The preheat (this machine's platform, by
    default) has the owning root of each blob fetch it, once; the other platform's blobs are
    left alone. Then skopeo pulls through each agent make 0 blob GETs at the registry. A
    second preheat finds everything cached and fetches nothing; --json says the same in one
    document; --platform adds the other platform's blobs, which a pull of that platform
    then finds at the roots too."""
    image = two_platform_image(tmp_path)
    push_image(image, registry, "team/app", "v1")
    host, other = image.image(HOST_PLATFORM), image.image(OTHER_PLATFORM)
    cluster = Cluster(make_agent, registry, roots=2, agents=2)
    node = cluster.agents[0].env  # run it on an agent node, with that node's configuration
    ref = f"{registry.host}/team/app:v1"

    first, first_seconds = preheat(node, ref, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "preheated 4 blobs" in first.stdout and "4 fetched" in first.stdout, first.stdout
    assert blob_gets(registry, host.blob_digests) == dict.fromkeys(sorted(host.blob_digests), 1)
    assert blob_gets(registry, other.blob_digests) == dict.fromkeys(sorted(other.blob_digests), 0)
    for digest in host.blob_digests:  # each at the root an agent asks
        _, owner = owner_of(cluster, digest)
        assert _cached_at(owner, digest), (digest, owner.name)

    mark = registry.log_mark()
    for got in pull_all(cluster.agents, "team/app:v1", tmp_path / "pulls"):
        assert host.blob_digests <= got
    assert sum(blob_gets(registry, host.blob_digests, since=mark).values()) == 0
    for agent in cluster.agents:
        assert agent_status(agent)["swarm"]["origin_fallbacks"] == 0

    second, second_seconds = preheat(node, ref, home=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "all cached already" in second.stdout, second.stdout
    as_json, _ = preheat(node, "--json", ref, home=tmp_path)
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is True and doc["fetched"] == 0 and doc["cached"] == 4, doc
    assert {b["digest"] for b in doc["blobs"]} == host.blob_digests
    assert {b["state"] for b in doc["blobs"]} == {"cached"}
    assert doc["images"][0]["manifests"] == [
        {"platform": HOST_PLATFORM, "digest": host.manifest_digest}
    ]
    assert sum(blob_gets(registry, host.blob_digests, since=mark).values()) == 0
    print(f"\npreheat of {ref}: first {first_seconds:.2f} s, second {second_seconds:.2f} s")

    both, _ = preheat(
        node, "--platform", HOST_PLATFORM, "--platform", OTHER_PLATFORM, ref, home=tmp_path
    )
    assert both.returncode == 0, both.stderr
    assert "3 fetched" in both.stdout and "4 cached already" in both.stdout, both.stdout
    mark = registry.log_mark()
    result = skopeo_copy_to_dir(
        f"{cluster.agents[1].host}/team/app:v1", tmp_path / "other-pull", platform=OTHER_PLATFORM
    )
    assert result.returncode == 0, result.stderr
    assert other.blob_digests <= verify_dir_blobs(tmp_path / "other-pull")
    assert sum(blob_gets(registry, other.blob_digests, since=mark).values()) == 0


def _cached_at(node: AgentProcess, digest: str) -> bool:
    return (node.cache_path / "blobs" / "sha256" / digest.split(":", 1)[1]).is_dir()


def test_preheat_says_what_is_wrong_and_fails(
    tmp_path: Path,
    registry: Registry,
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Each failure ends with a nonzero status and a message naming what to fix: an unknown
    tag, a registry not in POLLEN_UPSTREAMS, a platform the image lacks, roots that do not
    answer, a wrong cluster token, no roots at all. --json still prints one document."""
    image = two_platform_image(tmp_path)
    push_image(image, registry, "team/app", "v1")
    cluster = Cluster(make_agent, registry, roots=1, agents=0)
    node = {**cluster.roots[0].env, "POLLEN_NODE_IP": "127.0.0.40"}
    home = tmp_path

    unknown, _ = preheat(node, f"{registry.host}/team/app:nope", home=home)
    assert unknown.returncode == 1
    assert f"image {registry.host}/team/app:nope not found at registry" in unknown.stderr
    assert "MANIFEST_UNKNOWN" in unknown.stderr

    as_json, _ = preheat(node, "--json", f"{registry.host}/team/nothing:v1", home=home)
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and "not found" in doc["error"] and doc["blobs"] == []

    elsewhere, _ = preheat(node, "127.0.0.1:1/team/app:v1", home=home)
    assert elsewhere.returncode == 2
    assert "registry '127.0.0.1:1'" in elsewhere.stderr
    assert "POLLEN_UPSTREAMS" in elsewhere.stderr

    ref = f"{registry.host}/team/app:v1"
    s390x, _ = preheat(node, "--platform", "linux/s390x", ref, home=home)
    assert s390x.returncode == 1
    assert "no manifest for linux/s390x" in s390x.stderr
    assert HOST_PLATFORM in s390x.stderr and OTHER_PLATFORM in s390x.stderr

    dead = f"127.0.0.41:{free_port('127.0.0.41')}"
    gone, _ = preheat({**node, "POLLEN_ROOTS": dead}, ref, home=home)
    assert gone.returncode == 1
    assert f"no root answers ({dead}: " in gone.stderr, gone.stderr

    forged, _ = preheat({**node, "POLLEN_CLUSTER_TOKEN": "not-the-token"}, ref, home=home)
    assert forged.returncode == 1
    assert "bad signature" in forged.stderr + forged.stdout

    lonely = {k: v for k, v in node.items() if k != "POLLEN_ROOTS"}
    rootless, _ = preheat(lonely, ref, home=home)
    assert rootless.returncode == 2 and "POLLEN_ROOTS" in rootless.stderr

    assert sum(blob_gets(registry, image.image(HOST_PLATFORM).blob_digests).values()) == 0


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_a_private_image_is_preheated_with_credentials_over_p2p_tls_only(
    tmp_path: Path,
    make_registry: Callable[..., Registry],
    make_token_issuer: Callable[..., TokenIssuer],
    make_agent: Callable[..., AgentProcess],
    auth: str,
) -> None:
    """A registry with Basic auth, or with bearer tokens from an issuer. Preheat gets the
    credential from an auth file (or --creds) and hands the root the Authorization a pull
    would (a token for the repository from the issuer); the root fetches each blob once,
    and pulls through the agents with the same user then make no blob GET. Without P2P TLS
    the credential is not sent and preheat says why; without credentials, or with wrong
    ones, it says that."""
    alice = ("alice", "alice-pw")
    if auth == "token":
        issuer = make_token_issuer(users={"alice": Account("alice-pw", {"private/*": ["*"]})})
        registry = make_registry(auth="token", token_issuer=issuer)
    else:
        registry = make_registry(auth="htpasswd", users={"alice": "alice-pw"})
    image = build_image(tmp_path / "images", (2 * MiB, MiB), seed=63)
    push_image(image, registry, "private/app", "v1", creds=alice)
    addresses = [f"127.0.0.{i}" for i in range(2, 5)]
    files = make_ca_and_cert(tmp_path / "p2p-tls", addresses, prefix="node")
    tls = {
        "POLLEN_P2P_TLS_CA": str(files.ca),
        "POLLEN_P2P_TLS_CERT": str(files.cert),
        "POLLEN_P2P_TLS_KEY": str(files.key),
    }
    cluster = Cluster(make_agent, registry, roots=1, agents=2, env=tls)
    node = cluster.agents[0].env
    ref = f"{registry.host}/private/app:v1"
    authfile = write_authfile(tmp_path / "auth.json", {registry.host: alice})

    anonymous, _ = preheat(node, ref, home=tmp_path)
    assert anonymous.returncode == 1
    assert "asks for credentials to read private/app" in anonymous.stderr, anonymous.stderr
    wrong, _ = preheat(node, "--creds", "alice:nope", ref, home=tmp_path)
    assert wrong.returncode == 1 and "alice" in wrong.stderr, wrong.stderr
    plain = {k: v for k, v in node.items() if not k.startswith("POLLEN_P2P_TLS_")}
    clear, _ = preheat(plain, "--authfile", str(authfile), ref, home=tmp_path)
    assert clear.returncode == 2
    assert "clear text" in clear.stderr and "POLLEN_P2P_TLS_CERT" in clear.stderr
    assert sum(blob_gets(registry, image.blob_digests).values()) == 0

    done, _ = preheat(node, "--authfile", str(authfile), ref, home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert blob_gets(registry, image.blob_digests) == dict.fromkeys(sorted(image.blob_digests), 1)
    mark = registry.log_mark()
    for got in pull_all(cluster.agents, "private/app:v1", tmp_path / "pulls", creds=alice):
        assert image.blob_digests <= got
    assert sum(blob_gets(registry, image.blob_digests, since=mark).values()) == 0
    again, _ = preheat(node, "--creds", "alice:alice-pw", ref, home=tmp_path)
    assert again.returncode == 0 and "all cached already" in again.stdout


def test_a_preheat_with_one_group_s_configuration_warms_every_group_of_a_tiered_cluster(
    tmp_path: Path,
    registry: Registry,
    make_agent: Callable[..., AgentProcess],
) -> None:
    """Roots in tiers: two groups, each root the other's parent. A preheat run with group
    one's configuration warms group one's root, which fetches through the parent tier, so the
    tier's owner of each blob holds it too: pulls in both groups then make no blob GET."""
    image = build_image(tmp_path / "images", (2 * MiB, MiB, 512 * 1024), seed=64)
    push_image(image, registry, "team/tiers", "v1")
    roots, agents = start_groups(
        make_agent, registry, groups=2, agents_per_group=1, parent_roots=None
    )
    group_one = agents[0].env
    done, _ = preheat(group_one, f"{registry.host}/team/tiers:v1", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert blob_gets(registry, image.blob_digests) == dict.fromkeys(sorted(image.blob_digests), 1)
    mark = registry.log_mark()
    for got in pull_all(agents, "team/tiers:v1", tmp_path / "pulls"):
        assert image.blob_digests <= got
    assert sum(blob_gets(registry, image.blob_digests, since=mark).values()) == 0
