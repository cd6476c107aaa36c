"""Registry auth through a real agent: Basic (htpasswd) and bearer tokens, real clients.

The agent never answers for the registry: challenges pass through unchanged, credentials
go upstream, and a layer in the cache is handed out only to a credential the registry
itself accepted for that repository (checked with a HEAD, remembered for authCacheTTL).
Blob fetches are counted in the registry's own access log; Accept lines are seen by the
test's own `RegistryFront`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from harness import (
    AgentProcess,
    Containerd,
    Image,
    RawResponse,
    Registry,
    RegistryFront,
    TokenIssuer,
    blob_url,
    dir_manifest_digest,
    free_port,
    push_image,
    raw_get,
    skopeo_copy_to_dir,
    verify_dir_blobs,
    write_authfile,
)

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def pull(
    agent_host: str, ref: str, dest: Path, creds: tuple[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """skopeo pulling `<agent>/<ref>` directly, with credentials for the agent's host:port."""
    authfile = write_authfile(
        dest.parent / f"{dest.name}-auth.json", {agent_host: creds} if creds else {}
    )
    return skopeo_copy_to_dir(f"{agent_host}/{ref}", dest, authfile=authfile)


def blob_methods(registry: Registry, digest: str, since: int) -> list[tuple[str, int]]:
    registry.sync_log()
    return [(e["method"], e["status"]) for e in registry.blob_requests(digest, since=since)]


def assert_no_blob_bytes(r: RawResponse, image: Image) -> None:
    """An error response, and not one byte of any layer in it."""
    assert len(r.body) < 4096, len(r.body)
    for layer in image.layers:
        data = image.blob_path(layer.digest).read_bytes()
        assert data[:64] not in r.body and data[-64:] not in r.body


# -- Basic auth (htpasswd) ---------------------------------------------------------------------


def test_htpasswd_registry_through_the_agent(
    tmp_path: Path,
    make_registry: Callable[..., Registry],
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    reg = make_registry(auth="htpasswd", users={"alice": "alice-pw"})
    push_image(small_image, reg, "private/app", "v1", creds=("alice", "alice-pw"))
    agent = make_agent(upstreams=f"http://{reg.host}")

    # The challenge is the registry's own, passed through unchanged.
    direct = raw_get(reg.port, "/v2/")
    assert direct.status == 401
    challenge = direct.header_lines("www-authenticate")
    assert challenge == ['Basic realm="pollen-test"']
    for creds in ((), (basic("alice", "wrong"),)):
        r = raw_get(agent.port, "/v2/", *creds)
        assert r.status == 401, r.body
        assert r.header_lines("www-authenticate") == challenge
    assert raw_get(agent.port, "/v2/", basic("alice", "alice-pw")).status == 200

    ok = pull(agent.host, "private/app:v1", tmp_path / "alice", ("alice", "alice-pw"))
    assert ok.returncode == 0, ok.stderr
    assert verify_dir_blobs(tmp_path / "alice") == small_image.blob_digests
    assert dir_manifest_digest(tmp_path / "alice") == small_image.manifest_digest
    for digest in small_image.blob_digests:
        assert reg.blob_get_count(digest) == 1, digest

    mark = reg.log_mark()
    wrong = pull(agent.host, "private/app:v1", tmp_path / "wrong", ("alice", "wrong"))
    assert wrong.returncode != 0
    assert "401" in wrong.stderr or "unauthorized" in wrong.stderr.lower(), wrong.stderr
    reg.sync_log()
    seen = reg.requests_log(since=mark)
    assert ("GET", "/v2/", 401) in {(e["method"], e["path"], e["status"]) for e in seen}
    assert not any(e["method"] == "GET" and "/blobs/" in e["path"] for e in seen)

    # The layers are cached now; still nobody without the registry's yes gets them.
    for layer in small_image.layers:
        mark = reg.log_mark()
        for creds in ((), (basic("alice", "wrong"),), (basic("mallory", "alice-pw"),)):
            r = raw_get(agent.port, blob_url("private/app", layer.digest), *creds)
            assert r.status == 401, (creds, r.status)
            assert r.header_lines("www-authenticate") == challenge
            assert r.error_codes() == ["UNAUTHORIZED"], r.body
            assert_no_blob_bytes(r, small_image)
        methods = blob_methods(reg, layer.digest, mark)
        assert methods == [("HEAD", 401)] * 3, methods  # asked, and no blob GET at all
    # While alice still reads from the cache (no new blob GET at the registry).
    r = raw_get(
        agent.port,
        blob_url("private/app", small_image.layer_digests[0]),
        basic("alice", "alice-pw"),
    )
    assert r.status == 200 and r.sha256 == small_image.layer_digests[0]
    assert reg.blob_get_count(small_image.layer_digests[0]) == 1


# -- bearer tokens ----------------------------------------------------------------------------


def issue_token(issuer: TokenIssuer, user: str, password: str, scope: str) -> str:
    """A token from the issuer's own GET /token, the way skopeo asks for one."""
    query = urllib.parse.urlencode({"account": user, "scope": scope, "service": issuer.service})
    r = raw_get(issuer.port, f"/token?{query}", basic(user, password))
    assert r.status == 200, r.body
    return json.loads(r.body)["token"]


def test_token_registry_through_the_agent(
    tmp_path: Path,
    make_registry: Callable[..., Registry],
    token_issuer: TokenIssuer,
    make_image: Callable[..., Image],
    make_agent: Callable[..., AgentProcess],
) -> None:
    private = make_image(seed=0)
    public = make_image(seed=1)
    reg = make_registry(auth="token", token_issuer=token_issuer)
    push_image(private, reg, "private/app", "v1", creds=("alice", "alice-pw"))
    push_image(public, reg, "public/app", "v1", creds=("alice", "alice-pw"))
    agent = make_agent(upstreams=f"http://{reg.host}")

    # Challenges pass through unchanged: the realm is the issuer, not the agent.
    private_layer = private.layer_digests[0]
    for target in (
        "/v2/",
        "/v2/private/app/manifests/v1",
        blob_url("private/app", private_layer),
    ):
        direct = raw_get(reg.port, target)
        via_agent = raw_get(agent.port, target)
        assert direct.status == via_agent.status == 401, target
        assert via_agent.header_lines("www-authenticate") == direct.header_lines("www-authenticate")
        assert via_agent.header("www-authenticate").startswith(  # type: ignore[union-attr]
            f'Bearer realm="{token_issuer.realm}"'
        )

    before = len(token_issuer.requests)
    ok = pull(agent.host, "private/app:v1", tmp_path / "alice", ("alice", "alice-pw"))
    assert ok.returncode == 0, ok.stderr
    assert verify_dir_blobs(tmp_path / "alice") == private.blob_digests
    # skopeo went to the issuer itself, with alice's Basic credentials.
    alice_asks = [r for r in token_issuer.requests[before:] if r.account == "alice"]
    assert any(
        r.method == "GET"
        and r.status == 200
        and {"type": "repository", "name": "private/app", "actions": ["pull"]} in r.granted
        for r in alice_asks
    ), alice_asks
    for digest in private.blob_digests:
        assert reg.blob_get_count(digest) == 1, digest

    # bob may read public/* only: the cached private layers are not his.
    mark = reg.log_mark()
    bob = pull(agent.host, "private/app:v1", tmp_path / "bob", ("bob", "bob-pw"))
    assert bob.returncode != 0
    bob_token = issue_token(token_issuer, "bob", "bob-pw", "repository:private/app:pull")
    for layer in private.layers:
        r = raw_get(agent.port, blob_url("private/app", layer.digest), bearer(bob_token))
        assert r.status in (401, 403), (r.status, r.body)
        assert_no_blob_bytes(r, private)
    # A token made for another repository does not open this one either.
    forged = token_issuer.make_token(
        "bob", [{"type": "repository", "name": "public/app", "actions": ["pull"]}]
    )
    r = raw_get(agent.port, blob_url("private/app", private_layer), bearer(forged))
    assert r.status in (401, 403) and len(r.body) < 4096
    reg.sync_log()
    assert not any(
        e["method"] == "GET" and "/blobs/" in e["path"] for e in reg.requests_log(since=mark)
    ), "nothing of the private image was fetched for bob"
    for digest in private.blob_digests:
        assert reg.blob_get_count(digest) == 1

    # Anonymous pulls of public/* work, and the second one comes from the cache.
    for n in (1, 2):
        anon = pull(agent.host, "public/app:v1", tmp_path / f"anon{n}")
        assert anon.returncode == 0, anon.stderr
        assert verify_dir_blobs(tmp_path / f"anon{n}") == public.blob_digests
        for digest in public.blob_digests:
            assert reg.blob_get_count(digest) == 1, (n, digest)
    assert any(r.account is None and r.status == 200 for r in token_issuer.requests)


def test_containerd_token_pull_through_the_agent(
    make_registry: Callable[..., Registry],
    token_issuer: TokenIssuer,
    small_image: Image,
    containerd: Containerd,
    make_agent: Callable[..., AgentProcess],
) -> None:
    reg = make_registry(auth="token", token_issuer=token_issuer)
    ref = push_image(small_image, reg, "private/app", "v1", creds=("alice", "alice-pw"))
    agent = make_agent(upstreams=f"http://{reg.host}")
    # The fallback server is a port nothing listens on: only the agent can serve this pull.
    dead = f"http://127.0.0.1:{free_port()}"
    containerd.write_hosts_toml(reg.host, server_url=dead, mirror_url=agent.url)
    posts_before = len(token_issuer.requests_by("POST"))

    cp = containerd.pull(ref, user=("alice", "alice-pw"), check=False)
    assert cp.returncode == 0, cp.stderr
    assert small_image.blob_digests <= containerd.content_digests()
    posts = token_issuer.requests_by("POST")[posts_before:]
    assert posts and all(r.account == "alice" and r.status == 200 for r in posts), posts
    assert any("repository:private/app:pull" in r.scopes for r in posts)
    for digest in small_image.blob_digests:
        assert reg.blob_get_count(digest) == 1, digest
    # containerd sent ns= naming the registry, and the agent served every blob.
    cached = [p.parent.name for p in agent.cache_path.glob("blobs/sha256/*/index")]
    assert {f"sha256:{h}" for h in cached} >= set(small_image.layer_digests)

    denied = containerd.pull(ref, user=("bob", "bob-pw"), namespace="bob", check=False)
    assert denied.returncode != 0
    assert not (set(small_image.layer_digests) & containerd.content_digests("bob"))
    for digest in small_image.blob_digests:
        assert reg.blob_get_count(digest) == 1, digest


# -- the auth check is remembered per credential -----------------------------------------------


def test_auth_check_is_remembered_per_credential_for_the_ttl(
    make_registry: Callable[..., Registry],
    small_image: Image,
    make_agent: Callable[..., AgentProcess],
) -> None:
    reg = make_registry(auth="htpasswd", users={"alice": "alice-pw", "bob": "bob-pw"})
    push_image(small_image, reg, "private/app", "v1", creds=("alice", "alice-pw"))
    digest = small_image.layer_digests[0]
    path = blob_url("private/app", digest)
    alice, bob = basic("alice", "alice-pw"), basic("bob", "bob-pw")

    def heads(since: int) -> int:
        return sum(1 for m, _ in blob_methods(reg, digest, since) if m == "HEAD")

    long_ttl = make_agent(upstreams=f"http://{reg.host}", env={"POLLEN_AUTH_CACHE_TTL": "60s"})
    mark = reg.log_mark()
    for _ in range(3):  # the first caches the layer, the other two read the cache
        r = raw_get(long_ttl.port, path, alice)
        assert r.status == 200 and r.sha256 == digest
    assert heads(mark) == 1, "one credential, one check within the TTL"
    assert reg.blob_get_count(digest, since=mark) == 1
    r = raw_get(long_ttl.port, path, bob)
    assert r.status == 200 and r.sha256 == digest
    assert heads(mark) == 2, "another credential is checked on its own"
    r = raw_get(long_ttl.port, path, basic("alice", "wrong"))
    assert r.status == 401 and heads(mark) == 3
    assert reg.blob_get_count(digest, since=mark) == 1

    ttl = 0.5
    short_ttl = make_agent(upstreams=f"http://{reg.host}", env={"POLLEN_AUTH_CACHE_TTL": f"{ttl}s"})
    mark = reg.log_mark()
    r = raw_get(short_ttl.port, path, alice)
    assert r.status == 200 and r.sha256 == digest
    assert heads(mark) == 1
    time.sleep(ttl * 2)  # let the remembered "yes" expire: the expiry is what is tested
    r = raw_get(short_ttl.port, path, alice)
    assert r.status == 200 and r.sha256 == digest
    assert heads(mark) == 2, "an expired check is asked again"
    assert reg.blob_get_count(digest, since=mark) == 1  # the bytes still came from the cache


# -- Accept lines ------------------------------------------------------------------------------


def test_accept_lines_reach_the_registry_separately(
    tmp_path: Path,
    registry: Registry,
    small_image: Image,
    make_front: Callable[..., RegistryFront],
    make_agent: Callable[..., AgentProcess],
) -> None:
    assert small_image.manifest["mediaType"] == MT_OCI_MANIFEST
    push_image(small_image, registry, "team/oci", "v1")
    front = make_front(registry.url)
    agent = make_agent(upstreams=front.url)
    manifests = r"^/v2/team/oci/manifests/v1$"

    got = skopeo_copy_to_dir(f"{agent.host}/team/oci:v1", tmp_path / "pull")
    assert got.returncode == 0, got.stderr
    assert verify_dir_blobs(tmp_path / "pull") == small_image.blob_digests
    assert dir_manifest_digest(tmp_path / "pull") == small_image.manifest_digest
    stored = json.loads((tmp_path / "pull" / "manifest.json").read_text())
    assert stored["mediaType"] == MT_OCI_MANIFEST
    skopeo_gets = [e for e in front.seen("GET", manifests) if e.status == 200]
    assert skopeo_gets, front.seen()
    lines = skopeo_gets[0].header_lines("accept")
    assert len(lines) >= 2 and MT_OCI_MANIFEST in lines, lines
    assert not any("," in line for line in lines), f"Accept lines were folded: {lines}"

    # Exactly the lines a client sends, in order, one per line.
    n = front.count("GET", manifests)
    sent = [("Accept", MT_DOCKER_MANIFEST), ("Accept", MT_OCI_MANIFEST)]
    r = raw_get(agent.port, "/v2/team/oci/manifests/v1", *sent)
    assert r.status == 200, r.body
    assert r.header("content-type") == MT_OCI_MANIFEST
    assert r.sha256 == small_image.manifest_digest
    forwarded = front.seen("GET", manifests)[n:]
    assert len(forwarded) == 1
    assert forwarded[0].header_lines("accept") == [MT_DOCKER_MANIFEST, MT_OCI_MANIFEST]

    # containerd's Go client asks for gzip by default; the agent asks the registry for the
    # bytes as they are (a manifest came back compressed without Content-Encoding, and a
    # blob's first reader chose the encoding of a download every reader shares).
    r = raw_get(agent.port, "/v2/team/oci/manifests/v1", *sent, ("Accept-Encoding", "gzip"))
    assert r.status == 200 and r.sha256 == small_image.manifest_digest
    assert front.seen("GET", manifests)[-1].header_lines("accept-encoding") == []
