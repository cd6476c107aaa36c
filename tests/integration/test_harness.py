"""Self-tests of the integration harness against the REAL tools, with no agent involved.

If these pass, a later test that puts the agent between these clients and this registry
can trust what the harness tells it: the registry's own log counts what it served,
auth modes fail and succeed for the right reasons, and containerd (ctr and CRI) pulls
through hosts.toml.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    Account,
    Containerd,
    HarnessError,
    Image,
    ProcessDied,
    Registry,
    TLSFiles,
    TokenIssuer,
    build_image,
    dir_manifest_digest,
    etc_hosts_entry,
    hosts_toml,
    make_cert_dir,
    parse_access_line,
    push_image,
    skopeo_copy_to_dir,
    start_process,
    verify_dir_blobs,
    wait_http_ok,
    wait_until,
)
from harness.cri import decode_varint, encode_varint, iter_fields, pull_image_request, string_fields

pytestmark = pytest.mark.integration


# -- pure pieces ---------------------------------------------------------------------------


def test_varint_and_pull_request_encoding() -> None:
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        assert decode_varint(encode_varint(n), 0) == (n, len(encode_varint(n)))
    msg = pull_image_request("127.0.0.1:5000/a/b:t", ("alice", "pw"))
    fields = list(iter_fields(msg))
    assert [(f, wt) for f, wt, _ in fields] == [(1, 2), (2, 2)]
    assert string_fields(fields[0][2], 1) == ["127.0.0.1:5000/a/b:t"]  # type: ignore[arg-type]
    assert string_fields(fields[1][2], 1) == ["alice"]  # type: ignore[arg-type]
    assert string_fields(fields[1][2], 2) == ["pw"]  # type: ignore[arg-type]
    assert list(iter_fields(pull_image_request("x"))) == [(1, 2, b"\n\x01x")]


def test_libtrust_key_id_shape(make_token_issuer: Callable[..., TokenIssuer]) -> None:
    kid = make_token_issuer(key_type="ec").kid
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert set(kid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567:")


def test_parse_access_line() -> None:
    line = (
        '127.0.0.1 - - [27/Nov/2026:04:35:45 +0000] "GET /v2/a/b/blobs/sha256:'
        + "0" * 64
        + '?ns=x HTTP/1.1" 200 157 "" "containerd/1.6.20~ds1"'
    )
    e = parse_access_line(line)
    assert e is not None
    assert (e["method"], e["path"], e["query"], e["status"], e["size"]) == (
        "GET",
        "/v2/a/b/blobs/sha256:" + "0" * 64,
        "ns=x",
        200,
        157,
    )
    assert parse_access_line('time="..." level=info msg="response completed"') is None


def test_hosts_toml_text(tmp_path: Path) -> None:
    text = hosts_toml("https://up.example", "http://127.0.0.1:65001", ca=tmp_path / "ca.pem")
    assert 'server = "https://up.example"' in text
    assert '[host."http://127.0.0.1:65001"]' in text
    assert 'capabilities = ["pull", "resolve"]' in text
    assert text.count("ca = ") == 1  # only the https host gets the CA
    # containerd 1.6 ignores a file without a [host] table, so server-only gets one.
    assert '[host."http://127.0.0.1:5000"]' in hosts_toml("http://127.0.0.1:5000")


def test_build_image_is_deterministic(tmp_path: Path) -> None:
    a = build_image(tmp_path / "a", [1000, 2000], seed=7)
    b = build_image(tmp_path / "b", [1000, 2000], seed=7)
    c = build_image(tmp_path / "c", [1000, 2000], seed=8)
    assert a.manifest_digest == b.manifest_digest
    assert a.blob_digests.isdisjoint(c.blob_digests)
    index = json.loads((a.layout_dir / "index.json").read_text())
    assert index["manifests"][0]["digest"] == a.manifest_digest


# -- process helper ------------------------------------------------------------------------


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    with start_process([sys.executable, "-c", code], name="stubborn", log_dir=tmp_path) as p:
        wait_until(lambda: "up" in p.log_text(), timeout=10, what="child to print")
        t0 = time.monotonic()
        assert p.stop(term_timeout=0.3) == -signal.SIGKILL
        assert time.monotonic() - t0 < 5
        assert not p.alive()


def test_wait_fails_fast_when_child_dies(tmp_path: Path) -> None:
    code = "import sys; print('bad config: nope', flush=True); sys.exit(3)"
    with start_process([sys.executable, "-c", code], name="dies", log_dir=tmp_path) as p:
        t0 = time.monotonic()
        with pytest.raises(ProcessDied, match="bad config: nope"):
            wait_http_ok("http://127.0.0.1:9/", timeout=20, proc=p)
        assert time.monotonic() - t0 < 10


# -- registry + skopeo -------------------------------------------------------------------


def test_plain_registry_push_pull_counts_gets(
    registry: Registry, small_image: Image, tmp_path: Path
) -> None:
    ref = push_image(small_image, registry, "app/one")
    assert registry.blob_get_count(small_image.layer_digests[0]) == 0  # push only HEADs

    mark = registry.log_mark()
    cp = skopeo_copy_to_dir(ref, tmp_path / "pull1", check=True)
    assert cp.returncode == 0
    assert verify_dir_blobs(tmp_path / "pull1") == small_image.blob_digests
    assert dir_manifest_digest(tmp_path / "pull1") == small_image.manifest_digest
    for digest in small_image.blob_digests:
        assert registry.blob_get_count(digest, since=mark) == 1, digest

    # A second pull is counted again: the registry, not a client, is the witness.
    skopeo_copy_to_dir(ref, tmp_path / "pull2", check=True)
    for digest in small_image.layer_digests:
        assert registry.blob_get_count(digest) == 2
        assert registry.blob_get_count(digest, since=mark) == 2

    gets = [e for e in registry.requests_log(since=mark) if e["method"] == "GET"]
    assert {e["user_agent"].split("/")[0] for e in gets} == {"skopeo"}
    layer_sizes = {e["path"].rsplit("/", 1)[1]: e["size"] for e in gets if "/blobs/" in e["path"]}
    for layer in small_image.layers:
        assert layer_sizes[layer.digest] == layer.size


def test_htpasswd_registry(
    make_registry: Callable[..., Registry], small_image: Image, tmp_path: Path
) -> None:
    reg = make_registry(auth="htpasswd", users={"alice": "s3cret"})
    ref = push_image(small_image, reg, "private/app", creds=("alice", "s3cret"))

    anon = skopeo_copy_to_dir(ref, tmp_path / "anon")
    assert anon.returncode != 0 and "authentication required" in anon.stderr
    wrong = skopeo_copy_to_dir(ref, tmp_path / "wrong", creds=("alice", "nope"))
    assert wrong.returncode != 0
    assert all(reg.blob_get_count(d) == 0 for d in small_image.blob_digests)

    ok = skopeo_copy_to_dir(ref, tmp_path / "ok", creds=("alice", "s3cret"))
    assert ok.returncode == 0, ok.stderr
    assert verify_dir_blobs(tmp_path / "ok") == small_image.blob_digests
    assert any(e["status"] == 401 for e in reg.requests_log())  # 401s are in the log too


def test_token_registry_with_skopeo(
    make_registry: Callable[..., Registry],
    token_issuer: TokenIssuer,
    small_image: Image,
    tmp_path: Path,
) -> None:
    reg = make_registry(auth="token", token_issuer=token_issuer)
    ref = push_image(small_image, reg, "private/app", creds=("alice", "alice-pw"))
    push_image(small_image, reg, "public/app", creds=("alice", "alice-pw"))

    ok = skopeo_copy_to_dir(ref, tmp_path / "alice", creds=("alice", "alice-pw"))
    assert ok.returncode == 0, ok.stderr
    assert verify_dir_blobs(tmp_path / "alice") == small_image.blob_digests

    denied = skopeo_copy_to_dir(ref, tmp_path / "bob", creds=("bob", "bob-pw"))
    assert denied.returncode != 0 and "denied" in denied.stderr
    wrong = skopeo_copy_to_dir(ref, tmp_path / "wrong", creds=("alice", "nope"))
    assert wrong.returncode != 0
    anon_public = skopeo_copy_to_dir(f"{reg.host}/public/app:latest", tmp_path / "anon")
    assert anon_public.returncode == 0, anon_public.stderr

    # skopeo only ever uses GET /token with Basic credentials.
    assert token_issuer.requests_by("POST") == []
    alice_gets = [r for r in token_issuer.requests_by("GET") if r.account == "alice"]
    assert any(
        r.status == 200
        and {"type": "repository", "name": "private/app", "actions": ["pull"]} in r.granted
        for r in alice_gets
    )
    assert any(r.account == "alice" and r.status == 401 for r in token_issuer.requests)
    assert all(reg.blob_get_count(d) == 2 for d in small_image.layer_digests)  # alice + anon


def test_token_registry_with_ctr_and_cri(
    make_registry: Callable[..., Registry],
    make_token_issuer: Callable[..., TokenIssuer],
    containerd: Containerd,
    small_image: Image,
) -> None:
    issuer = make_token_issuer(
        users={
            "alice": Account("alice-pw", {"private/*": ["pull", "push"]}),
            "bob": Account("bob-pw", {}),
        },
        key_type="ec",  # ES256 here; the skopeo test covers RS256
    )
    reg = make_registry(auth="token", token_issuer=issuer)
    ref = push_image(small_image, reg, "private/app", creds=("alice", "alice-pw"))
    containerd.write_hosts_toml(reg.host, server_url=reg.url)

    ok = containerd.pull(ref, user=("alice", "alice-pw"), check=False)
    assert ok.returncode == 0, ok.stderr
    assert small_image.blob_digests <= containerd.content_digests()
    posts = issuer.requests_by("POST")
    assert posts and all(r.account == "alice" and r.status == 200 for r in posts)
    assert "repository:private/app:pull" in posts[0].scopes

    bob = containerd.pull(ref, user=("bob", "bob-pw"), namespace="bob", check=False)
    assert bob.returncode != 0
    wrong = containerd.pull(ref, user=("alice", "nope"), namespace="wrong", check=False)
    assert wrong.returncode != 0
    assert any(r.method == "POST" and r.status == 401 for r in issuer.requests)

    # The CRI plugin sends the AuthConfig's credentials the same way (POST /token).
    before = len(issuer.requests_by("POST"))
    image_id = containerd.cri_pull(ref, auth=("alice", "alice-pw"))
    assert image_id == small_image.config_digest
    assert len(issuer.requests_by("POST")) > before
    with pytest.raises(Exception, match="(?i)unauthorized|denied|401|403"):
        containerd.cri_pull(ref, auth=("bob", "bob-pw"))
    # Counted at the registry: ctr (alice) once, CRI (alice) once — nobody else got bytes.
    assert all(reg.blob_get_count(d) == 2 for d in small_image.layer_digests)


def test_ctr_fetch_and_pull_through_hosts_toml(
    registry: Registry, containerd: Containerd, small_image: Image
) -> None:
    ref = push_image(small_image, registry, "app/one")
    # Mirror form. containerd adds ?ns= only when the mirror's host[:port] differs from
    # the image's, so name the same registry "localhost" as its own mirror.
    mirror = f"http://localhost:{registry.port}"
    containerd.write_hosts_toml(registry.host, server_url=registry.url, mirror_url=mirror)

    mark = registry.log_mark()
    containerd.fetch(ref, namespace="fetch")
    assert small_image.blob_digests <= containerd.content_digests("fetch")
    for d in small_image.blob_digests:
        assert registry.blob_get_count(d, since=mark) == 1
    seen = registry.requests_log(since=mark)
    assert seen[0]["method"] == "HEAD" and "/manifests/latest" in seen[0]["path"]
    assert all(e["query"] == f"ns={registry.host.replace(':', '%3A')}" for e in seen), seen

    # Another namespace does not share content ("isolated"), so it fetches again.
    containerd.pull(ref, namespace="pull")
    assert ref in containerd.image_names("pull")
    for d in small_image.blob_digests:
        assert registry.blob_get_count(d, since=mark) == 2


def test_cri_pull_plain_registry(
    registry: Registry, containerd: Containerd, small_image: Image
) -> None:
    ref = push_image(small_image, registry, "app/cri", tag="v1")
    containerd.write_hosts_toml(registry.host, server_url=registry.url)

    image_id = containerd.cri_pull(ref)
    assert image_id == small_image.config_digest
    assert small_image.blob_digests <= containerd.content_digests("k8s.io")
    images = {img.id: img for img in containerd.cri_list_images()}
    assert ref in images[image_id].repo_tags
    assert f"{registry.host}/app/cri@{small_image.manifest_digest}" in images[image_id].repo_digests
    agents = {e["user_agent"] for e in registry.requests_log() if e["method"] in ("GET", "HEAD")}
    assert any(a.startswith("containerd/") for a in agents)
    for d in small_image.layer_digests:
        assert registry.blob_get_count(d) == 1

    containerd.cri_remove_image(ref)
    assert image_id not in {img.id for img in containerd.cri_list_images()}


def test_tls_registry(
    make_registry: Callable[..., Registry],
    tls_files: TLSFiles,
    containerd: Containerd,
    small_image: Image,
    tmp_path: Path,
) -> None:
    reg = make_registry(tls=tls_files)
    assert reg.url.startswith("https://127.0.0.1:")
    cert_dir = make_cert_dir(tls_files.ca, tmp_path / "certs")
    ref = push_image(small_image, reg, "app/tls", tls_verify=True, cert_dir=cert_dir)

    ok = skopeo_copy_to_dir(ref, tmp_path / "ok", tls_verify=True, cert_dir=cert_dir)
    assert ok.returncode == 0, ok.stderr
    assert verify_dir_blobs(tmp_path / "ok") == small_image.blob_digests
    untrusted = skopeo_copy_to_dir(ref, tmp_path / "untrusted", tls_verify=True)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr

    containerd.write_hosts_toml(reg.host, server_url=reg.url, ca=tls_files.ca)
    containerd.pull(ref)
    assert small_image.blob_digests <= containerd.content_digests()


def test_etc_hosts_entry_resolves_and_is_removed(
    registry: Registry, small_image: Image, tmp_path: Path
) -> None:
    hosts = Path("/etc/hosts")
    if not os.access(hosts, os.W_OK):
        pytest.skip("/etc/hosts is not writable (needs root)")
    name = "origin.pollen-harness.test"
    before = hosts.read_text().splitlines()
    push_image(small_image, registry, "app/named")
    with etc_hosts_entry(name, "127.0.0.1") as line:
        assert line in hosts.read_text().splitlines()
        cp = skopeo_copy_to_dir(f"{name}:{registry.port}/app/named:latest", tmp_path / "named")
        assert cp.returncode == 0, cp.stderr
    after = hosts.read_text().splitlines()
    # Exactly our line is gone; other lines (even ones someone added meanwhile) stay.
    assert line not in after and all(entry in after for entry in before)

    with pytest.raises(RuntimeError, match="boom"), etc_hosts_entry(name) as line2:
        raise RuntimeError("boom")
    assert line2 not in hosts.read_text().splitlines()
    with pytest.raises(ValueError):
        with etc_hosts_entry(name, "10.0.0.1"):
            pass


def test_harness_error_names_the_failing_command(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="skopeo"):
        skopeo_copy_to_dir(f"{registry.host}/no/such:tag", tmp_path / "x", check=True)
